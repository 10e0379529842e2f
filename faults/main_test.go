//go:build faults

package faults_test

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// relayBin is the command (cmd/watermill-outbox), built once by TestMain;
// the scenarios run its relay subcommand.
var relayBin string

// result is what one scenario counted at the broker.
type result struct {
	scenario  string
	committed int // events committed (the set delivery is checked against)
	received  int // distinct committed events seen at the broker
	// lost: committed, not a poison message, never seen at the broker.
	lost int
	// duplicates: deliveries beyond the first of an event.
	duplicates int
	// reordered: in ordered scenarios, first deliveries of an event whose
	// per-key sequence is lower than the highest already delivered for its
	// key. A re-delivery of an event already seen is a duplicate, not a
	// reordering. Unordered scenarios count none.
	reordered int
	// deadWrongly: rows in the dead state that are not poison messages.
	deadWrongly int
}

var (
	resultsMu sync.Mutex
	results   []result
	resumes   = map[string]time.Duration{} // broker → longest time from its return to the first publish
)

// recordResume adds a broker outage's resume figure to the summary, which
// shows each broker's longest.
func recordResume(broker string, d time.Duration) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	resumes[broker] = max(resumes[broker], d)
}

// record adds a scenario's counts to the summary; scenarios call it before
// asserting, so a failing scenario is counted too.
func record(t *testing.T, r result) {
	t.Helper()
	r.scenario = t.Name()
	resultsMu.Lock()
	results = append(results, r)
	resultsMu.Unlock()
	t.Logf("%s: committed=%d received=%d lost=%d duplicates=%d reordered=%d dead_wrongly=%d",
		r.scenario, r.committed, r.received, r.lost, r.duplicates, r.reordered, r.deadWrongly)
}

// summary is the suite's one line, over every scenario that ran.
func summary() string {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var sum result
	for _, r := range results {
		sum.lost += r.lost
		sum.duplicates += r.duplicates
		sum.reordered += r.reordered
		sum.deadWrongly += r.deadWrongly
	}
	line := fmt.Sprintf("faults: scenarios=%d lost=%d duplicates=%d reordered=%d dead_wrongly=%d",
		len(results), sum.lost, sum.duplicates, sum.reordered, sum.deadWrongly)
	line += livenessSummary()
	for _, l := range inboxLines {
		line += "\n" + l
	}
	if len(resumes) > 0 {
		line += "\nfaults: first publish after the broker's (or new leader's) return, longest:"
		for _, b := range slices.Sorted(maps.Keys(resumes)) {
			line += fmt.Sprintf(" %s=%.2fs", b, resumes[b].Seconds())
		}
	}
	return line
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	dir, err := os.MkdirTemp("", "outbox-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	relayBin = filepath.Join(dir, "watermill-outbox")
	build := exec.Command("go", "build", "-o", relayBin, "github.com/e0a82c8c/watermill-outbox/cmd/watermill-outbox")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "faults: build the relay: %v\n%s", err, out)
		return 1
	}

	code := m.Run()

	line := summary()
	fmt.Println(line)
	if path := os.Getenv("OUTBOX_FAULTS_SUMMARY"); path != "" {
		if err := os.WriteFile(path, []byte(line+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "faults: write summary:", err)
			return 1
		}
	}
	return code
}
