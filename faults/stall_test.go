//go:build faults

package faults_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// A scenario whose wait times out says why before it fails: whether its
// own checks could read the table, what the database and PgBouncer see of
// the relays' connections (taken first, while the relays still hold
// them), then each running relay's goroutines
// (SIGQUIT makes a Go program print them all and exit), with the end of
// its log. A stall that happens once in many runs is then read from that
// run's output.

// stallWatch is what the running test registered for its diagnosis.
var stallWatch struct {
	sync.Mutex
	relays    []*relay
	scenarios []*scenario
}

func watchRelay(t *testing.T, r *relay)       { watch(t, &stallWatch.relays, r) }
func watchScenario(t *testing.T, s *scenario) { watch(t, &stallWatch.scenarios, s) }

// watch registers x in *list, one of stallWatch's, for the test's run.
func watch[T comparable](t *testing.T, list *[]T, x T) {
	stallWatch.Lock()
	*list = append(*list, x)
	stallWatch.Unlock()
	t.Cleanup(func() {
		stallWatch.Lock()
		defer stallWatch.Unlock()
		*list = without(*list, x)
	})
}

func without[T comparable](list []T, x T) []T {
	out := list[:0]
	for _, y := range list {
		if y != x {
			out = append(out, y)
		}
	}
	return out
}

// diagnoseStall logs the running scenarios' rows by state and their
// checks' last error, the database's and PgBouncer's view of the
// connections, and the goroutines of the running relays, which it stops.
func diagnoseStall(t *testing.T) {
	t.Helper()
	stallWatch.Lock()
	relays, scenarios := append([]*relay(nil), stallWatch.relays...), append([]*scenario(nil), stallWatch.scenarios...)
	stallWatch.Unlock()
	postgres, bouncer := false, false
	for _, s := range scenarios {
		postgres = postgres || s.dialect == outbox.PostgreSQL
		bouncer = bouncer || s.dsn == testenv.PgBouncerDSN()
	}
	var report []string
	for _, s := range scenarios {
		if e, _ := s.countErr.Load().(struct{ error }); e.error != nil {
			report = append(report, fmt.Sprintf("%s: the checks' last count failed: %v", s.table, e.error))
		}
		if s.dialect == outbox.PostgreSQL {
			report = append(report, query(s.table+" rows by state (direct)", testenv.PostgresDSN(), false,
				`SELECT state, count(*), count(claim_token) AS claimed FROM `+s.table+` GROUP BY state ORDER BY state`))
		}
	}
	if postgres {
		report = append(report, pgActivity())
	}
	if bouncer {
		report = append(report, bouncerState())
	}
	var wg sync.WaitGroup
	dumps := make([]string, len(relays))
	for i, r := range relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dumps[i] = r.quitDump()
		}()
	}
	wg.Wait()
	for _, d := range append(dumps, report...) {
		if d != "" {
			t.Log(d)
		}
	}
}

// quitDump sends SIGQUIT to the relay's running process and returns the
// end of its log before the signal and the goroutine dump after it; ""
// when no process runs.
func (r *relay) quitDump() string {
	p, err := r.signal(syscall.SIGQUIT, 10*time.Second)
	if p == nil {
		return ""
	}
	r.mu.Lock()
	r.dumped = true // the log is shown here, not again when t ends
	r.mu.Unlock()
	b, rerr := os.ReadFile(r.logPath)
	if rerr != nil {
		return fmt.Sprintf("%s: no log: %v", r.name, rerr)
	}
	log := string(b[min(p.logFrom, int64(len(b))):])
	before, dump, found := strings.Cut(log, "SIGQUIT: quit")
	lines := strings.Split(strings.TrimRight(before, "\n"), "\n")
	lines = lines[max(0, len(lines)-40):]
	head := fmt.Sprintf("%s: pid %d stalled; its last %d log lines, then its goroutines on SIGQUIT", r.name, p.cmd.Process.Pid, len(lines))
	if err != nil || !found {
		head += fmt.Sprintf(" (no dump: %v)", err)
	}
	return head + ":\n" + strings.Join(lines, "\n") + "\nSIGQUIT: quit" + frameAddrs.ReplaceAllString(dump, "")
}

// frameAddrs are the addresses a SIGQUIT dump gives each frame, noise here.
var frameAddrs = regexp.MustCompile(`(?m) fp=0x[0-9a-f]+ sp=0x[0-9a-f]+ pc=0x[0-9a-f]+$`)

// pgActivity is pg_stat_activity of the test database, read over a
// direct connection (PgBouncer's queue may be what stalls).
func pgActivity() string {
	return query("pg_stat_activity (direct)", testenv.PostgresDSN(), false,
		`SELECT pid, application_name, backend_type, state, wait_event_type, wait_event,
		        pg_blocking_pids(pid)::text AS blocked_by, (now() - xact_start)::text AS xact_age,
		        (now() - state_change)::text AS state_age,
		        left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query
		   FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY xact_start NULLS LAST, pid`)
}

// bouncerState is PgBouncer's pools, server and client connections, from
// its console (scripts/services makes postgres a stats user).
func bouncerState() string {
	u, err := url.Parse(testenv.PgBouncerDSN())
	if err != nil {
		return "PgBouncer console: " + err.Error()
	}
	u.Path = "/pgbouncer"
	var out []string
	for _, show := range []string{"SHOW POOLS", "SHOW SERVERS", "SHOW CLIENTS"} {
		out = append(out, query("PgBouncer "+show, u.String(), true, show))
	}
	return strings.Join(out, "\n")
}

// query runs one statement on a connection of its own and formats its
// rows, one line each; simple marks PgBouncer's console, which speaks the
// simple query protocol only.
func query(title, dsn string, simple bool, stmt string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return title + ": " + err.Error()
	}
	if simple {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return title + ": " + err.Error()
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, stmt)
	if err != nil {
		return title + ": " + err.Error()
	}
	defer rows.Close()
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	lines := []string{title + ":", strings.Join(cols, " | ")}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return title + ": " + err.Error()
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = cell(v)
		}
		lines = append(lines, strings.Join(cells, " | "))
	}
	if err := rows.Err(); err != nil {
		lines = append(lines, "error: "+err.Error())
	}
	return strings.Join(lines, "\n")
}

func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case time.Time:
		return v.UTC().Format("15:04:05.000")
	}
	return fmt.Sprint(v)
}
