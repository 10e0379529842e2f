package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const deadListUsage = `Usage:
  watermill-outbox dead list [--topic T] [--limit N] [--after ID] [--json]

Lists dead rows, oldest first: id, topic, partition key, attempts, age and
the last error (cut to one line here; in full with --json). One page at a
time: when more rows follow, the last line is the command for the next page
(--after the last id shown).
`

// lastErrorWidth is how much of last_error the table shows.
const lastErrorWidth = 100

// deadRowJSON is one row of dead list --json.
type deadRowJSON struct {
	ID           int64     `json:"id"`
	UUID         string    `json:"uuid"`
	Topic        string    `json:"topic"`
	PartitionKey string    `json:"partition_key"`
	Attempts     int       `json:"attempts"`
	CreatedAt    time.Time `json:"created_at"`
	AgeSeconds   float64   `json:"age_seconds"`
	LastError    string    `json:"last_error"`
}

type deadListJSON struct {
	Rows []deadRowJSON `json:"rows"`
	// NextAfter is the --after of the next page; null on the last page.
	NextAfter *int64 `json:"next_after"`
}

func (a *app) deadList(ctx context.Context, args []string) error {
	f := newFlags("dead list", deadListUsage)
	var d dbFlags
	d.register(f)
	topic := f.String("topic", "", "only this topic's dead rows")
	limit := f.Int("limit", 100, fmt.Sprintf("rows per page, 1 to %d", config.MaxBatchSize))
	after := f.Int64("after", 0, "list the rows after this id: the cursor the previous page printed")
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	if err := a.parse(f, args); err != nil {
		return err
	}
	if *limit < 1 || *limit > config.MaxBatchSize {
		return usagef("--limit: want 1 to %d, got %d", config.MaxBatchSize, *limit)
	}
	if *after < 0 {
		return usagef("--after: want an id (0 or more), got %d", *after)
	}
	if err := checkTopic(*topic); err != nil {
		return err
	}
	store, _, err := a.open(ctx, &d, false)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	q := outbox.DeadQuery{Topic: *topic, AfterID: *after, Limit: *limit}
	rows, err := store.ListDead(ctx, q)
	if err != nil {
		return storeError(err)
	}
	var next *int64
	if len(rows) == *limit {
		// A full page: one more row tells whether another page follows.
		last := rows[len(rows)-1].ID
		q.AfterID, q.Limit = last, 1
		more, err := store.ListDead(ctx, q)
		if err != nil {
			return storeError(err)
		}
		if len(more) > 0 {
			next = &last
		}
	}
	now := time.Now()
	if *asJSON {
		out := deadListJSON{Rows: []deadRowJSON{}, NextAfter: next}
		for _, r := range rows {
			out.Rows = append(out.Rows, deadRowJSON{
				ID: r.ID, UUID: r.UUID, Topic: r.Topic, PartitionKey: r.PartitionKey, Attempts: r.Attempts,
				CreatedAt: r.CreatedAt.UTC(), AgeSeconds: now.Sub(r.CreatedAt).Seconds(), LastError: r.LastError,
			})
		}
		return writeJSON(a.stdout, out)
	}
	if len(rows) == 0 {
		fmt.Fprintf(a.stdout, "no dead rows%s in table %s\n", ofTopic(*topic, *after), store.Config().Table)
		return nil
	}
	if err := printDead(a.stdout, rows, now); err != nil {
		return err
	}
	if next == nil {
		fmt.Fprintln(a.stdout, "(last page)")
		return nil
	}
	cmd := name + " dead list"
	if *topic != "" {
		cmd += " --topic " + shellQuote(*topic)
	}
	if *limit != 100 {
		cmd += " --limit " + strconv.Itoa(*limit)
	}
	fmt.Fprintf(a.stdout, "next page: %s --after %d\n", cmd, *next)
	return nil
}

func ofTopic(topic string, after int64) string {
	s := ""
	if topic != "" {
		s = " of topic " + strconv.Quote(topic)
	}
	if after > 0 {
		s += " after id " + strconv.FormatInt(after, 10)
	}
	return s
}

// printDead prints rows as a table, each value through display.
func printDead(out io.Writer, rows []outbox.DeadRow, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTOPIC\tKEY\tATTEMPTS\tAGE\tLAST ERROR")
	for _, r := range rows {
		key := display(r.PartitionKey)
		if key == "" {
			key = "-"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\n", r.ID, display(r.Topic), key, r.Attempts, age(now.Sub(r.CreatedAt)), display(shorten(r.LastError)))
	}
	return w.Flush()
}

// shorten puts an error on one line of at most lastErrorWidth runes. A
// wrapped error ends with its reason ("…: declare queue: Exception (403)
// Reason: …"), so a long one keeps its start and its end, cut between.
func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= lastErrorWidth {
		return s
	}
	r := []rune(s)
	const head = 30
	return string(r[:head]) + "…" + string(r[len(r)-(lastErrorWidth-head-1):])
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9._/:@%+=,-]+$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if plainWord.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// checkTopic refuses a topic no row can have.
func checkTopic(topic string) error {
	if topic == "" {
		return nil
	}
	if err := outbox.ValidateTopic(topic); err != nil {
		return usagef("--topic: %s", err)
	}
	return nil
}

const deadRequeueUsage = `Usage:
  watermill-outbox dead requeue (--id ID[,ID...] | --topic T | --all) [--yes]

Makes dead rows pending and due again with a fresh retry budget (their
last error is kept until the next failure), so the relay publishes them
again. Without --yes it only prints how many rows it would requeue and the
first of them, and changes nothing. Rows are written 1,000 per statement,
each statement its own transaction, so a large requeue never holds many
locks for long; should it stop half way, run it again.
`

const deadPurgeUsage = `Usage:
  watermill-outbox dead purge (--id ID[,ID...] | --topic T | --all) [--yes]

Deletes dead rows for good. Without --yes it only prints how many rows it
would delete and the first of them, and changes nothing. Rows are deleted
1,000 per statement, each statement its own transaction; should it stop
half way, run it again.
`

// sampleSize is how many rows a dry run shows.
const sampleSize = 5

// idsFlag is --id: repeatable, each a comma-separated list.
type idsFlag []int64

func (f *idsFlag) String() string { return "" }

func (f *idsFlag) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		id, err := strconv.ParseInt(part, 10, 64)
		if err != nil || id < 1 {
			return fmt.Errorf("want row ids (positive integers), got %q", part)
		}
		*f = append(*f, id)
	}
	return nil
}

// selection is which dead rows a requeue or purge is about.
type selection struct {
	ids   []int64
	topic string
	all   bool
}

func (s selection) String() string {
	switch {
	case s.all:
		return "of every topic"
	case s.topic != "":
		return "of topic " + strconv.Quote(s.topic)
	}
	return fmt.Sprintf("among the %d ids given", len(s.ids))
}

// deadAction is requeue or purge.
type deadAction struct {
	verb, done string
	byIDs      func(s *outbox.SQLStore, ctx context.Context, ids ...int64) (int, error)
	byTopic    func(s *outbox.SQLStore, ctx context.Context, topic string) (int, error)
	all        func(s *outbox.SQLStore, ctx context.Context) (int, error)
}

var (
	requeueAction = deadAction{"requeue", "requeued", (*outbox.SQLStore).Requeue, (*outbox.SQLStore).RequeueTopic, (*outbox.SQLStore).RequeueAll}
	purgeAction   = deadAction{"purge", "purged", (*outbox.SQLStore).PurgeDead, (*outbox.SQLStore).PurgeDeadTopic, (*outbox.SQLStore).PurgeAllDead}
)

func (a *app) deadRequeue(ctx context.Context, args []string) error {
	return a.deadChange(ctx, args, deadRequeueUsage, requeueAction)
}

func (a *app) deadPurge(ctx context.Context, args []string) error {
	return a.deadChange(ctx, args, deadPurgeUsage, purgeAction)
}

func (a *app) deadChange(ctx context.Context, args []string, usage string, act deadAction) error {
	f := newFlags("dead "+act.verb, usage)
	var d dbFlags
	d.register(f)
	var sel selection
	f.Var((*idsFlag)(&sel.ids), "id", "these rows: an id or a comma-separated list; repeatable")
	f.StringVar(&sel.topic, "topic", "", "every dead row of this topic")
	f.BoolVar(&sel.all, "all", false, "every dead row of every topic")
	yes := f.Bool("yes", false, "do it; without it, only print what would be done")
	if err := a.parse(f, args); err != nil {
		return err
	}
	given := 0
	for _, set := range []bool{len(sel.ids) > 0, sel.topic != "", sel.all} {
		if set {
			given++
		}
	}
	if given != 1 {
		return usagef("dead %s: give exactly one of --id, --topic or --all", act.verb)
	}
	if err := checkTopic(sel.topic); err != nil {
		return err
	}
	sel.ids = slices.Compact(slices.Sorted(slices.Values(sel.ids)))
	store, _, err := a.open(ctx, &d, false)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	table := store.Config().Table

	if !*yes {
		n, sample, err := preview(ctx, store, sel)
		if err != nil {
			return storeError(err)
		}
		if n == 0 {
			fmt.Fprintf(a.stdout, "no dead rows %s in table %s: nothing to %s\n", sel, table, act.verb)
			return nil
		}
		fmt.Fprintf(a.stdout, "would %s %d dead %s %s in table %s", act.verb, n, rowsWord(n), sel, table)
		if n > len(sample) {
			fmt.Fprintf(a.stdout, "; the first %d:\n", len(sample))
		} else {
			fmt.Fprintln(a.stdout, ":")
		}
		if err := printDead(a.stdout, sample, time.Now()); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "nothing changed: add --yes to %s them\n", act.verb)
		return nil
	}

	var n int
	switch {
	case sel.all:
		n, err = act.all(store, ctx)
	case sel.topic != "":
		n, err = act.byTopic(store, ctx, sel.topic)
	default:
		n, err = act.byIDs(store, ctx, sel.ids...)
	}
	if err != nil {
		return fmt.Errorf("dead %s: %s %d %s, then: %w", act.verb, act.done, n, rowsWord(n), storeError(err))
	}
	fmt.Fprintf(a.stdout, "%s %d dead %s %s in table %s\n", act.done, n, rowsWord(n), sel, table)
	return nil
}

// preview counts the dead rows sel selects and returns the first few.
func preview(ctx context.Context, store *outbox.SQLStore, sel selection) (int, []outbox.DeadRow, error) {
	if len(sel.ids) == 0 {
		topic := sel.topic
		n, err := store.CountDead(ctx, topic)
		if err != nil {
			return 0, nil, err
		}
		sample, err := store.ListDead(ctx, outbox.DeadQuery{Topic: topic, Limit: sampleSize})
		return n, sample, err
	}
	n := 0
	var sample []outbox.DeadRow
	for chunk := range slices.Chunk(sel.ids, config.MaxBatchSize) {
		rows, err := store.ListDead(ctx, outbox.DeadQuery{IDs: chunk, Limit: config.MaxBatchSize})
		if err != nil {
			return 0, nil, err
		}
		n += len(rows)
		sample = append(sample, rows[:min(len(rows), sampleSize-len(sample))]...)
	}
	return n, sample, nil
}

func rowsWord(n int) string {
	if n == 1 {
		return "row"
	}
	return "rows"
}
