package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

var statsUsage = `Usage:
  watermill-outbox stats [--json] [--database-url URL] [--table NAME]

Prints the table's state per topic:

  PENDING         rows due now that no relay holds: what the relays have yet to take
  WAITING         rows backing off after a failed attempt, not due yet
  LEASED          rows a live relay has claimed and holds a lease on
  ORPHANED        rows still leased to a relay that is gone (its heartbeat expired,
                  see OUTBOX_RELAY_TIMEOUT_SECONDS): the next claim of a live relay
                  takes them over; a count that stays means no relay is claiming
  DEAD            rows the relay gave up on (see 'watermill-outbox dead')
  BACKLOG         undelivered rows (pending + waiting + leased); ~N past the cap is
                  the database planner's estimate, not a count (docs/operating.md gives its error)
  OLDEST UNDELIVERED  age of the oldest undelivered row (pending, waiting or leased):
                  what to alert on, as a relay that is down or stuck shows as a growing age
  OLDEST LEASED   age of the oldest leased or orphaned row: how long a key has waited on a lease
  OLDEST DEAD     age of the oldest dead row, since it was written

Its cost is bounded whatever the backlog: it reads each topic's ` + strconv.Itoa(outbox.StatsLimit) + `
oldest undelivered and dead rows through their indexes. A count marked +
is capped: the topic has more rows than were read (the ages stay exact).
`

// statsJSON is stats --json.
type statsJSON struct {
	Table      string           `json:"table"`
	Database   string           `json:"database"`
	StatsLimit int              `json:"stats_limit"`
	Topics     []topicStatsJSON `json:"topics"`
}

type topicStatsJSON struct {
	Topic                string  `json:"topic"`
	Pending              int     `json:"pending"`
	Waiting              int     `json:"waiting"`
	Leased               int     `json:"leased"`
	Orphaned             int     `json:"orphaned"`
	Dead                 int     `json:"dead"`
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	OldestLeasedSeconds  float64 `json:"oldest_leased_seconds"`
	OldestDeadSeconds    float64 `json:"oldest_dead_seconds"`
	BacklogCapped        bool    `json:"backlog_capped"`
	DeadCapped           bool    `json:"dead_capped"`
	// BacklogEstimate is the planner's estimate of the undelivered rows,
	// set only when backlog_capped (0 on SQLite).
	BacklogEstimate int64 `json:"backlog_estimate,omitempty"`
}

func (a *app) stats(ctx context.Context, args []string) error {
	f := newFlags("stats", statsUsage)
	var d dbFlags
	d.register(f)
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	if err := a.parse(f, args); err != nil {
		return err
	}
	store, dbu, err := a.open(ctx, &d, false)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	st, err := store.Stats(ctx)
	if err != nil {
		return storeError(err)
	}
	table := store.Config().Table
	if *asJSON {
		out := statsJSON{Table: table, Database: dbu.String(), StatsLimit: outbox.StatsLimit, Topics: []topicStatsJSON{}}
		for _, t := range st.Topics {
			out.Topics = append(out.Topics, topicStatsJSON{
				Topic: t.Topic, Pending: t.Pending, Waiting: t.Waiting, Leased: t.Leased, Orphaned: t.Orphaned, Dead: t.Dead,
				OldestPendingSeconds: t.OldestPending.Seconds(), OldestLeasedSeconds: t.OldestLeased.Seconds(),
				OldestDeadSeconds: t.OldestDead.Seconds(),
				BacklogCapped:     t.BacklogCapped, DeadCapped: t.DeadCapped, BacklogEstimate: t.BacklogEstimate,
			})
		}
		return writeJSON(a.stdout, out)
	}
	fmt.Fprintf(a.stdout, "table %s on %s\n", table, dbu)
	if len(st.Topics) == 0 {
		fmt.Fprintln(a.stdout, "no undelivered or dead rows")
		return nil
	}
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TOPIC\tPENDING\tWAITING\tLEASED\tORPHANED\tDEAD\tBACKLOG\tOLDEST UNDELIVERED\tOLDEST LEASED\tOLDEST DEAD")
	capped := false
	for _, t := range st.Topics {
		backlog := count(t.Undelivered(), t.BacklogCapped)
		if t.BacklogEstimate > 0 {
			backlog = "~" + strconv.FormatInt(t.BacklogEstimate, 10)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", display(t.Topic),
			count(t.Pending, t.BacklogCapped), count(t.Waiting, t.BacklogCapped), count(t.Leased, t.BacklogCapped),
			count(t.Orphaned, t.BacklogCapped), count(t.Dead, t.DeadCapped), backlog,
			age(t.OldestPending), age(t.OldestLeased), age(t.OldestDead))
		capped = capped || t.BacklogCapped || t.DeadCapped
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if capped {
		fmt.Fprintf(a.stdout, "+ capped: the topic has more rows than the %d oldest read; ~ an estimate of the whole backlog\n", outbox.StatsLimit)
	}
	return nil
}

func count(n int, capped bool) string {
	if capped {
		return strconv.Itoa(n) + "+"
	}
	return strconv.Itoa(n)
}

// age renders a duration to the precision an operator reads: 850ms, 42s,
// 4m12s, 5h03m, 3d04h; "-" for none.
func age(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
