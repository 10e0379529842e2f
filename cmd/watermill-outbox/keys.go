package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/e0a82c8c/watermill-outbox/internal/escape"
	"github.com/e0a82c8c/watermill-outbox/internal/opsjson"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

var keysUsage = `Usage:
  watermill-outbox keys [--topic T] [--limit N] [--after-topic T --after-key K] [--json]
  watermill-outbox keys requeue --topic T --key K [--yes]
  watermill-outbox keys skip    --topic T --key K [--yes]

Lists the blocked keys: partition keys whose head (first row not yet
delivered) failed and is backing off, or, with OUTBOX_STRICT_ORDER, is
dead; every later row of the key waits behind it. For each: the head's id,
state, attempts and last error, how many rows wait behind it (counted up
to ` + strconv.Itoa(outbox.BlockedBehindLimit) + `, shown with + past that), the head's age (how long the key
has delivered nothing newer), and when a waiting head is retried. Keys are
listed in (topic, key) order, a page at a time; when more may follow, the
last line is the command for the next page.

'keys requeue' retries the head now: a dead head becomes pending with a
fresh retry budget, a waiting one due at once. 'keys skip' deletes the head
for good, so the rows behind it go on. Either way the key's order holds:
the head keeps its place in front. Without --yes both only print the head
and change nothing. Text output shows control characters escaped (\n, \x1b);
--json shows the values as stored.
`

func (a *app) keys(ctx context.Context, args []string) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "requeue":
			return a.keyChange(ctx, "requeue", args[1:])
		case "skip":
			return a.keyChange(ctx, "skip", args[1:])
		}
		return usagef("keys: unknown subcommand %q: want requeue or skip, or flags only to list", args[0])
	}
	f := newFlags("keys", keysUsage)
	var d dbFlags
	d.register(f)
	topic := f.String("topic", "", "only this topic's keys")
	limit := f.Int("limit", 100, fmt.Sprintf("keys per page, 1 to %d", outbox.MaxBlockedPage))
	afterTopic := f.String("after-topic", "", "list the keys after this topic and key: the cursor the previous page printed")
	afterKey := f.String("after-key", "", "see --after-topic")
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	if err := a.parse(f, args); err != nil {
		return err
	}
	if *limit < 1 || *limit > outbox.MaxBlockedPage {
		return usagef("--limit: want 1 to %d, got %d", outbox.MaxBlockedPage, *limit)
	}
	if err := checkTopic(*topic); err != nil {
		return err
	}
	store, _, err := a.open(ctx, &d, false)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	q := outbox.BlockedQuery{Topic: *topic, AfterTopic: *afterTopic, AfterKey: *afterKey, Limit: *limit}
	page, err := store.BlockedKeys(ctx, q)
	if err != nil {
		return storeError(err)
	}
	var next *opsjson.KeyCursor
	if len(page) == *limit {
		last := page[len(page)-1]
		next = &opsjson.KeyCursor{AfterTopic: last.Topic, AfterKey: last.Key}
	}
	if *asJSON {
		out := opsjson.NewKeys(page, next)
		return writeJSON(a.stdout, out)
	}
	if len(page) == 0 {
		fmt.Fprintf(a.stdout, "no blocked keys%s in table %s\n", ofTopic(*topic, 0), store.Config().Table)
		return nil
	}
	if err := printKeys(a.stdout, page); err != nil {
		return err
	}
	if next == nil {
		fmt.Fprintln(a.stdout, "(last page)")
		return nil
	}
	cmd := name + " keys"
	if *topic != "" {
		cmd += " --topic " + shellQuote(*topic)
	}
	if *limit != 100 {
		cmd += " --limit " + strconv.Itoa(*limit)
	}
	fmt.Fprintf(a.stdout, "next page: %s --after-topic %s --after-key %s\n", cmd, shellQuote(next.AfterTopic), shellQuote(next.AfterKey))
	return nil
}

func printKeys(out io.Writer, page []outbox.BlockedKey) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TOPIC\tKEY\tHEAD\tSTATE\tATTEMPTS\tBEHIND\tHEAD AGE\tRETRY IN\tLAST ERROR")
	for _, b := range page {
		behind := strconv.Itoa(b.Behind)
		if b.BehindCapped {
			behind += "+"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n", escape.Control(b.Topic), escape.Control(b.Key), b.HeadID, b.State, b.Attempts,
			behind, age(b.HeadAge), age(b.RetryIn), escape.Control(shorten(b.LastError)))
	}
	return w.Flush()
}

func (a *app) keyChange(ctx context.Context, verb string, args []string) error {
	f := newFlags("keys "+verb, keysUsage)
	var d dbFlags
	d.register(f)
	topic := f.String("topic", "", "the key's topic (required)")
	key := f.String("key", "", "the partition key (required)")
	yes := f.Bool("yes", false, "do it; without it, only print what would be done")
	if err := a.parse(f, args); err != nil {
		return err
	}
	if *topic == "" || *key == "" {
		return usagef("keys %s: give --topic and --key", verb)
	}
	if err := checkTopic(*topic); err != nil {
		return err
	}
	store, _, err := a.open(ctx, &d, false)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	table := store.Config().Table
	if !*yes {
		head, err := store.BlockedKey(ctx, *topic, *key)
		if errors.Is(err, outbox.ErrNotBlocked) {
			fmt.Fprintf(a.stdout, "key %s of topic %s is not blocked in table %s: nothing to %s\n", escape.Control(*key), escape.Control(*topic), table, verb)
			return nil
		}
		if err != nil {
			return storeError(err)
		}
		what := map[string]string{"requeue": "retry now", "skip": "delete for good"}[verb]
		fmt.Fprintf(a.stdout, "would %s the head of key %s in table %s:\n", what, escape.Control(*key), table)
		if err := printKeys(a.stdout, []outbox.BlockedKey{head}); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "nothing changed: add --yes to %s it\n", verb)
		return nil
	}
	act := (*outbox.SQLStore).RequeueKey
	if verb == "skip" {
		act = (*outbox.SQLStore).SkipKey
	}
	done, err := act(store, ctx, *topic, *key)
	if err != nil {
		return fmt.Errorf("keys %s: %w", verb, storeError(err))
	}
	fmt.Fprintf(a.stdout, "%s row %d (%s), the head of key %s of topic %s in table %s\n",
		map[string]string{"requeue": "requeued", "skip": "skipped (deleted)"}[verb], done.HeadID, done.State, escape.Control(*key), escape.Control(*topic), table)
	return nil
}
