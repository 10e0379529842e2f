package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// child is a relay process: the bench itself with -child. It connects,
// prints "ready", waits for a "go" line on its standard input, relays, and
// stops once its standard input closes.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan error
}

func (r *runner) startChild(side, id, topic string, unordered bool) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-child", side, "-child-id", id, "-child-topic", topic,
		"-sink", r.o.sink, "-kafka", strings.Join(r.b.brokers, ","), "-amqp", r.o.amqpURL, "-pg", r.o.pgDSN)
	if r.o.noWake {
		cmd.Args = append(cmd.Args, "-no-wake")
	}
	if unordered {
		cmd.Args = append(cmd.Args, "-child-unordered")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, ready: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() && sc.Text() == "ready" {
			c.ready <- nil
		} else {
			c.ready <- fmt.Errorf("relay process %d did not start", cmd.Process.Pid)
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return c, nil
}

// stop closes the child's standard input and waits for it to exit.
func (c *child) stop() error {
	_ = c.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		_ = c.cmd.Process.Kill()
		return fmt.Errorf("relay process %d did not stop within a minute; killed", c.cmd.Process.Pid)
	}
}

// relayProcs drains what c waits for with count relay processes of side
// (outbox or forwarder) on the tables of id, and returns the time from
// the moment they were all ready and told to go until c had everything,
// and each process's peak RSS (VmHWM).
func (r *runner) relayProcs(side, id, topic string, count int, unordered bool, c *consumer) (time.Duration, []int64, error) {
	var kids []*child
	defer func() {
		for _, k := range kids {
			if err := k.stop(); err != nil {
				logf("%v", err)
			}
		}
	}()
	for range count {
		k, err := r.startChild(side, id, topic, unordered)
		if err != nil {
			return 0, nil, err
		}
		kids = append(kids, k)
	}
	for _, k := range kids {
		select {
		case err := <-k.ready:
			if err != nil {
				return 0, nil, err
			}
		case <-time.After(time.Minute):
			return 0, nil, fmt.Errorf("relay process %d not ready within a minute", k.cmd.Process.Pid)
		}
	}
	start := time.Now()
	for _, k := range kids {
		if _, err := io.WriteString(k.stdin, "go\n"); err != nil {
			return 0, nil, err
		}
	}
	peaks := make([]int64, len(kids))
	sample := func() {
		for i, k := range kids {
			if v, err := vmHWM(k.cmd.Process.Pid); err == nil {
				peaks[i] = max(peaks[i], v)
			}
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(r.o.timeout)
	for {
		sample()
		select {
		case <-c.done:
			elapsed := time.Since(start)
			sample()
			return elapsed, peaks, nil
		case <-tick.C:
		case <-deadline:
			return 0, nil, c.wait(0)
		}
	}
}

// peakRSS drains a backlog of n events with s's relay running in a child
// process and returns the child's peak resident set size in bytes.
func (r *runner) peakRSS(s side, id string, n int) (int64, error) {
	ctx := context.Background()
	defer s.cleanup()
	if err := s.setup(ctx); err != nil {
		return 0, err
	}
	topic := "bench_" + s.name() + "_" + id
	drop, err := r.b.prepare(topic)
	if err != nil {
		return 0, err
	}
	defer drop()
	if err := seed(ctx, r.db, s, topic, makeMessages(n, r.o.payload, 0)); err != nil {
		return 0, err
	}
	c, err := r.b.consume(topic, n)
	if err != nil {
		return 0, err
	}
	defer c.stop()
	elapsed, peaks, err := r.relayProcs(s.name(), id, topic, 1, false, c)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", s.name(), err)
	}
	logf("%s: drained %d events in %s, peak RSS %.1f MB", s.name(), n, elapsed.Round(time.Millisecond), mb(peaks[0]))
	return peaks[0], nil
}

// vmHWM reads a process's peak resident set size from /proc.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// runChild is a relay process (memory, backlog-1m, instances): it relays
// from the "go" line on its standard input until that input closes.
func runChild(o options) error {
	r, closeRunner, err := newRunner(o)
	if err != nil {
		return err
	}
	defer closeRunner()
	var s side
	var dest func() (message.Publisher, error)
	switch o.child {
	case "outbox":
		cfg := r.ourConfig()
		cfg.DisableOrdering = cfg.DisableOrdering || o.childUnord
		s, dest = newOurSide(r.db, o.childID, cfg), r.b.ourPublisher
	case "forwarder":
		s, dest = newFwdSide(r.db, o.childID), r.b.forwarderPublisher
	default:
		return fmt.Errorf("unknown side %q", o.child)
	}
	if err := s.setup(context.Background()); err != nil {
		return err
	}
	pub, err := dest()
	if err != nil {
		return err
	}
	defer pub.Close()
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	if line, err := in.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return nil // told to stop before going
	}
	stop, err := s.startRelay(pub)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	stop()
	return nil
}

// backlogRun drains an n-row backlog over r.o.keys keys with one relay
// process, ordered or not.
func (r *runner) backlogRun(n int, unordered bool) (time.Duration, int64, error) {
	ctx := context.Background()
	cfg := r.ourConfig()
	cfg.DisableOrdering = cfg.DisableOrdering || unordered
	id := runID()
	s := newOurSide(r.db, id, cfg)
	if err := s.setup(ctx); err != nil {
		return 0, 0, err
	}
	defer s.cleanup()
	topic := "bench_backlog_" + id
	drop, err := r.b.prepare(topic)
	if err != nil {
		return 0, 0, err
	}
	defer drop()
	if err := seedRows(ctx, s, topic, n, func(i int) *message.Message { return newMessage(i, r.o.payload, keyOf(i, r.o.keys)) }); err != nil {
		return 0, 0, err
	}
	c, err := r.b.consume(topic, n)
	if err != nil {
		return 0, 0, err
	}
	defer c.stop()
	elapsed, peaks, err := r.relayProcs("outbox", id, topic, 1, unordered, c)
	if err != nil {
		return 0, 0, err
	}
	mode := map[bool]string{false: "ordered", true: "unordered"}[unordered]
	logf("%s: %d rows in %s (%s), peak RSS %.1f MB, %d reordered, %d duplicates",
		mode, n, elapsed.Round(time.Millisecond), rate(n, elapsed), mb(peaks[0]), c.reorder, c.dups)
	return elapsed, peaks[0], nil
}

func (r *runner) backlog1m() (result, error) {
	fields := []string{"backlog=" + strconv.Itoa(r.o.backlog), "keys=" + strconv.Itoa(r.o.keys)}
	for _, unordered := range []bool{false, true} {
		mode := map[bool]string{false: "ordered", true: "unordered"}[unordered]
		logf("%s: %d-row backlog", mode, r.o.backlog)
		big, bigRSS, err := r.backlogRun(r.o.backlog, unordered)
		if err != nil {
			return result{}, fmt.Errorf("%s, %d rows: %w", mode, r.o.backlog, err)
		}
		logf("%s: %d-row backlog", mode, r.o.n)
		small, smallRSS, err := r.backlogRun(r.o.n, unordered)
		if err != nil {
			return result{}, fmt.Errorf("%s, %d rows: %w", mode, r.o.n, err)
		}
		bigRate, smallRate := float64(r.o.backlog)/big.Seconds(), float64(r.o.n)/small.Seconds()
		fields = append(fields,
			mode+"="+rate(r.o.backlog, big), fmt.Sprintf("%s_rss=%.1fMB", mode, mb(bigRSS)),
			mode+"_small="+rate(r.o.n, small), fmt.Sprintf("%s_small_rss=%.1fMB", mode, mb(smallRSS)),
			fmt.Sprintf("%s_ratio=%.2f", mode, bigRate/smallRate),
			fmt.Sprintf("%s_rss_ratio=%.2f", mode, float64(bigRSS)/float64(smallRSS)),
		)
	}
	return result{fields: fields}, nil
}

// instancesScenario drains N ordered events with one relay process, then
// with r.o.instances of them on one table.
func (r *runner) instancesScenario() (result, error) {
	ctx := context.Background()
	fields := []string{"keys=" + strconv.Itoa(r.o.keys)}
	var rates []float64
	for _, count := range []int{1, r.o.instances} {
		id := runID()
		s := newOurSide(r.db, id, r.ourConfig())
		if err := s.setup(ctx); err != nil {
			return result{}, err
		}
		topic := "bench_instances_" + id
		drop, err := r.b.prepare(topic)
		if err != nil {
			s.cleanup()
			return result{}, err
		}
		err = seedRows(ctx, s, topic, r.o.n, func(i int) *message.Message { return newMessage(i, r.o.payload, keyOf(i, r.o.keys)) })
		var c *consumer
		if err == nil {
			c, err = r.b.consume(topic, r.o.n)
		}
		var elapsed time.Duration
		if err == nil {
			logf("%d relay process(es) on one table, %d ordered events over %d keys", count, r.o.n, r.o.keys)
			elapsed, _, err = r.relayProcs("outbox", id, topic, count, false, c)
			c.stop()
		}
		drop()
		s.cleanup()
		if err != nil {
			return result{}, fmt.Errorf("%d relays: %w", count, err)
		}
		logf("  %d events in %s (%s), %d reordered, %d duplicates", r.o.n, elapsed.Round(time.Millisecond), rate(r.o.n, elapsed), c.reorder, c.dups)
		rates = append(rates, float64(r.o.n)/elapsed.Seconds())
		n := strconv.Itoa(count)
		fields = append(fields, "relays"+n+"="+rate(r.o.n, elapsed), "reordered"+n+"="+strconv.Itoa(c.reorder), "duplicates"+n+"="+strconv.Itoa(c.dups))
	}
	fields = append(fields, fmt.Sprintf("ratio=%.2f", rates[1]/rates[0]))
	return result{fields: fields}, nil
}
