//go:build faults

package faults_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// relay runs the relay binary as a separate OS process, and again after each
// kill. Its output (stderr logging) goes to a file in the test's temporary
// directory, printed when the test fails.
type relay struct {
	t       *testing.T
	name    string
	args    []string
	env     []string
	logPath string

	mu         sync.Mutex
	cur        *proc
	starts     int
	kills      int
	unexpected []string // exits the test did not cause
	dumped     bool     // its log was shown with a goroutine dump (diagnoseStall)
}

// proc is one run of the relay binary.
type proc struct {
	cmd      *exec.Cmd
	logFrom  int64         // the log's size when it started
	exited   chan struct{} // closed once Wait returned
	err      error         // Wait's result, set before exited is closed
	intended bool          // guarded by relay.mu: the test signalled it
}

// newRelay prepares a relay named name with the scenario's environment
// (OUTBOX_* variables; any OUTBOX_* of the test process is dropped) and
// the relay subcommand's flags. It stops the relay when t ends.
func newRelay(t *testing.T, name string, vars map[string]string, args ...string) *relay {
	t.Helper()
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_") {
			env = append(env, kv)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	r := &relay{t: t, name: name, args: args, env: env, logPath: filepath.Join(t.TempDir(), name+".log")}
	watchRelay(t, r)
	t.Cleanup(func() {
		r.mu.Lock()
		running := r.cur != nil
		r.mu.Unlock()
		if running {
			if err := r.stop(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		r.mu.Lock()
		dumped := r.dumped
		r.mu.Unlock()
		if t.Failed() && !dumped {
			lines := 80
			if n, err := strconv.Atoi(os.Getenv("FAULTS_LOG_LINES")); err == nil {
				lines = n
			}
			r.dumpLog(lines)
		}
	})
	return r
}

// start starts a new process; the previous one must have exited.
func (r *relay) start() {
	r.t.Helper()
	f, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(r.t, err)
	defer f.Close() // the child has its own descriptor
	st, err := f.Stat()
	require.NoError(r.t, err)
	cmd := exec.Command(relayBin, append([]string{"relay"}, r.args...)...)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = f, f
	// Should this test binary die (a timeout panic), its relays die too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(r.t, cmd.Start(), "%s: start", r.name)
	p := &proc{cmd: cmd, logFrom: st.Size(), exited: make(chan struct{})}
	r.mu.Lock()
	r.cur = p
	r.starts++
	r.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		r.mu.Lock()
		if !p.intended {
			r.unexpected = append(r.unexpected, fmt.Sprintf("pid %d exited on its own: %v", cmd.Process.Pid, p.err))
		}
		r.mu.Unlock()
		close(p.exited)
	}()
}

// signal sends sig to the current process and waits for it to exit.
func (r *relay) signal(sig syscall.Signal, timeout time.Duration) (*proc, error) {
	r.mu.Lock()
	p := r.cur
	if p != nil {
		p.intended = true
	}
	r.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("%s: not running", r.name)
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return p, fmt.Errorf("%s: pid %d did not exit within %s of %v", r.name, p.cmd.Process.Pid, timeout, sig)
	}
	r.mu.Lock()
	r.cur = nil
	r.mu.Unlock()
	return p, nil
}

// kill9 kills the current process with SIGKILL: no Close, no release of its
// claims, no flush of its acks.
func (r *relay) kill9() {
	r.t.Helper()
	_, err := r.signal(syscall.SIGKILL, 10*time.Second)
	require.NoError(r.t, err)
	r.mu.Lock()
	r.kills++
	r.mu.Unlock()
}

// stop stops the current process with SIGTERM, as an orchestrator would,
// and reports whether it exited cleanly.
func (r *relay) stop() error {
	r.waitStarted(30 * time.Second)
	p, err := r.signal(syscall.SIGTERM, 30*time.Second)
	if err != nil {
		return err
	}
	if p.err != nil {
		return fmt.Errorf("%s: pid %d: exit after SIGTERM: %v", r.name, p.cmd.Process.Pid, p.err)
	}
	return nil
}

// waitStarted waits until the current process has written to its log:
// until then it may not have installed its signal handler yet, and a
// SIGTERM sent in the first milliseconds of a process kills any Go program
// (the default action), which says nothing about the relay.
func (r *relay) waitStarted(timeout time.Duration) {
	r.mu.Lock()
	p := r.cur
	r.mu.Unlock()
	if p == nil {
		return
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		if st, err := os.Stat(r.logPath); err == nil && st.Size() > p.logFrom {
			return
		}
		select {
		case <-p.exited:
			return
		case <-deadline:
			return // signal it anyway: stop reports what happens
		case <-tick.C:
		}
	}
}

// requireNoUnexpectedExit fails t if any process of r exited without being
// signalled by the test: the relay must survive every fault by itself.
func (r *relay) requireNoUnexpectedExit() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Empty(r.t, r.unexpected, "%s exited without a signal", r.name)
}

// logContains reports whether the relay's log has s.
func (r *relay) logContains(s string) bool {
	b, err := os.ReadFile(r.logPath)
	return err == nil && bytes.Contains(b, []byte(s))
}

func (r *relay) dumpLog(lines int) {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		r.t.Logf("%s: no log: %v", r.name, err)
		return
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	r.mu.Lock()
	starts, kills := r.starts, r.kills
	r.mu.Unlock()
	r.t.Logf("%s: last %d log lines (%d starts, %d kills):\n%s", r.name, len(all), starts, kills, strings.Join(all, "\n"))
}
