//go:build faults

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
)

// servicesLock is shared by everyone who runs tests against the machine's
// PostgreSQL, MariaDB and RabbitMQ: tests hold it shared, a scenario that
// takes a service away holds it exclusively for the whole outage.
const servicesLock = "/tmp/outbox-services.lock"

// inheritedLock is the descriptor of servicesLock this process inherited,
// or -1. `flock -s /tmp/outbox-services.lock bash .ci/run` hands its
// (shared) lock down to every child, this test binary included: a second
// descriptor asking for an exclusive lock would wait for that shared lock,
// held by our own ancestor, forever. Converting the inherited one does not.
// It is marked close-on-exec: the relays, consumers and service commands
// this binary starts must not share it, or a broker started again by
// scripts/services would hold the lock, exclusive if taken so at that
// moment, for as long as it runs.
var inheritedLock = findInheritedLock()

func findInheritedLock() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	for _, e := range ents {
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && link == servicesLock {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				syscall.CloseOnExec(fd)
				return fd
			}
		}
	}
	return -1
}

// lockServices takes servicesLock exclusively, waiting (bounded) for tests
// holding it shared to finish, and returns its release, which may be called
// more than once; it is also released when t ends. With an inherited lock,
// release turns it back into the shared lock the ancestor holds.
func lockServices(t *testing.T) (unlock func()) {
	t.Helper()
	fd, release := inheritedLock, func() { _ = syscall.Flock(inheritedLock, syscall.LOCK_SH) }
	if fd < 0 {
		f, err := os.OpenFile(servicesLock, os.O_CREATE|os.O_RDWR, 0o666)
		require.NoError(t, err)
		fd, release = int(f.Fd()), func() {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			_ = f.Close()
		}
	}
	start := time.Now()
	deadline := start.Add(15 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	logged := false
	for {
		// Converting a shared lock drops it first; a failed attempt leaves
		// no lock, which is what waiting for an exclusive one means.
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			release()
			t.Fatalf("flock %s: %v", servicesLock, err)
		}
		if time.Now().After(deadline) {
			release()
			t.Fatalf("%s still held by others after %s", servicesLock, time.Since(start).Round(time.Second))
		}
		if !logged && time.Since(start) > 2*time.Second {
			t.Logf("waiting for %s: other tests use the services", servicesLock)
			logged = true
		}
		<-tick.C
	}
	if logged {
		t.Logf("%s taken after %s", servicesLock, time.Since(start).Round(time.Second))
	}
	var once sync.Once
	unlock = func() { once.Do(release) }
	t.Cleanup(unlock)
	return unlock
}

// service is a shared server a scenario can take away.
type service struct {
	name  string
	stop  func() error
	start func() error
	// up reports nil once the service answers.
	up func() error
}

// outage takes svc down for downFor, then starts it again and waits until
// it answers; it restores the service even if t fails on the way. The
// caller holds the services lock (lockServices) across it.
func outage(t *testing.T, svc service, downFor time.Duration) (back time.Time) {
	t.Helper()
	return outageDuring(t, svc, downFor, nil)
}

// outageDuring is outage that runs during (if not nil) once the service
// is down, before the outage's time is up.
func outageDuring(t *testing.T, svc service, downFor time.Duration, during func()) (back time.Time) {
	t.Helper()
	restored := false
	defer func() {
		if restored {
			return
		}
		// A failure on the way: bring the service back for everyone.
		if err := svc.start(); err != nil {
			t.Errorf("restore %s: %v", svc.name, err)
		}
		if _, err := waitService(svc.up, true, 2*time.Minute); err != nil {
			t.Errorf("restore %s: %v", svc.name, err)
		}
	}()

	began := time.Now()
	require.NoError(t, svc.stop(), "stop %s", svc.name)
	_, err := waitService(svc.up, false, time.Minute)
	require.NoError(t, err, "%s still answers after stop", svc.name)
	t.Logf("%s down", svc.name)
	if during != nil {
		during()
	}
	// The outage itself lasts downFor: a duration the scenario chooses, not
	// a wait for some condition.
	<-time.After(time.Until(began.Add(downFor)))
	require.NoError(t, svc.start(), "start %s", svc.name)
	back, err = waitService(svc.up, true, 2*time.Minute)
	require.NoError(t, err, "%s does not answer after start", svc.name)
	restored = true
	t.Logf("%s up again after %s", svc.name, back.Sub(began).Round(100*time.Millisecond))
	return back
}

// waitService polls up until it reports the wanted state or timeout passes,
// and returns when it first did.
func waitService(up func() error, want bool, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := up()
		if (err == nil) == want {
			return time.Now(), nil
		}
		select {
		case <-deadline:
			if want {
				return time.Time{}, fmt.Errorf("not answering after %s: %v", timeout, err)
			}
			return time.Time{}, fmt.Errorf("still answering after %s", timeout)
		case <-tick.C:
		}
	}
}

// command runs a service command with a bound, returning its output on error.
func command(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startService starts a stopped service the way every machine's services
// are started: scripts/services up NAME.
func startService(t *testing.T, name string) func() error {
	script := servicesScript(t)
	return func() error { return command(script, "up", name) }
}

// postgresService is the machine's PostgreSQL cluster, stopped with
// pg_ctlcluster (Debian's wrapper) and started by scripts/services.
func postgresService(t *testing.T) service {
	t.Helper()
	versions, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(versions) == 0 {
		t.Skipf("no local PostgreSQL cluster to restart (/etc/postgresql: %v)", err)
	}
	names := make([]string, len(versions))
	for i, v := range versions {
		names[i] = v.Name()
	}
	sort.Strings(names)
	version := names[len(names)-1]
	ctl := func(action string, extra ...string) func() error {
		return func() error {
			return command("pg_ctlcluster", append([]string{"--skip-systemctl-redirect", version, "main", action}, extra...)...)
		}
	}
	return service{
		name:  "PostgreSQL " + version,
		stop:  ctl("stop", "-m", "fast"),
		start: startService(t, "postgres"),
		up:    func() error { return command("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432") },
	}
}

// mariadbService is the machine's MariaDB server.
func mariadbService(t *testing.T) service {
	t.Helper()
	if _, err := exec.LookPath("mariadb-admin"); err != nil {
		t.Skip("no local MariaDB to restart (mariadb-admin not found)")
	}
	return service{
		name:  "MariaDB",
		stop:  func() error { return command("mariadb-admin", "-uroot", "shutdown") },
		start: startService(t, "mariadb"),
		up:    func() error { return command("mariadb-admin", "-h", "127.0.0.1", "-uroot", "--silent", "ping") },
	}
}

// rabbitService is the machine's RabbitMQ node: stop_app closes every
// connection and the listener, start_app recovers the durable queues. The
// node itself keeps running (scripts/services up would find it answering
// and start nothing), so the outage lasts seconds, not a node's boot.
func rabbitService(t *testing.T) service {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("no local RabbitMQ to restart (rabbitmqctl not found)")
	}
	url := testenv.AMQPURL(t)
	return service{
		name:  "RabbitMQ",
		stop:  func() error { return command("rabbitmqctl", "stop_app") },
		start: func() error { return command("rabbitmqctl", "start_app") },
		up: func() error {
			conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
			if err != nil {
				return err
			}
			return conn.Close()
		},
	}
}
