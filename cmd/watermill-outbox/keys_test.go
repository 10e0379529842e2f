package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	neturl "net/url"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/opsjson"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestCLIKeys: keys lists a key held by a failing head, escaped in text
// and as stored in JSON; requeue is a dry run without --yes and retries
// the head with it; bad input is refused with status 2.
func TestCLIKeys(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	for _, d := range cliDBs {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, bin, d)
			ids := f.insert("orders", "k1", 3)
			f.insert("orders", "k2", 1)
			ctx := context.Background()
			c, err := f.store.Claim(ctx, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
			require.NoError(t, err)
			require.Equal(t, []int64{ids[0]}, []int64{c.Rows[0].ID})
			const lastErr = "boom\n\x1b[2Jcleared"
			_, err = f.store.RecordFailure(ctx, c.Token, ids[0], lastErr, time.Hour)
			require.NoError(t, err)

			out := f.cli.ok("keys")
			require.Contains(t, out, "TOPIC")
			require.Contains(t, out, "k1")
			require.NotContains(t, out, "k2", "a free key is not listed")
			require.Contains(t, out, strconv.FormatInt(ids[0], 10))
			require.Contains(t, out, `boom \x1b[2Jcleared`, "on one line, control characters escaped")
			require.NotContains(t, out, "\x1b", "no raw escape reaches the terminal")
			require.Contains(t, out, "(last page)")

			var js opsjson.Keys
			require.NoError(t, json.Unmarshal([]byte(f.cli.ok("keys", "--json")), &js))
			require.Len(t, js.Keys, 1)
			require.Equal(t, lastErr, js.Keys[0].LastError, "JSON as stored")
			require.Equal(t, 2, js.Keys[0].Behind)
			require.Equal(t, outbox.HeadWaiting, js.Keys[0].State)
			require.Nil(t, js.Next)

			out = f.cli.ok("keys", "requeue", "--topic", "orders", "--key", "k1")
			require.Contains(t, out, "nothing changed")
			require.Len(t, f.cli.okJSONKeys(), 1, "the dry run changed nothing")
			out = f.cli.ok("keys", "requeue", "--topic", "orders", "--key", "k1", "--yes")
			require.Contains(t, out, "requeued row "+strconv.FormatInt(ids[0], 10))
			require.Contains(t, f.cli.ok("keys"), "no blocked keys")
			c, err = f.store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
			require.NoError(t, err)
			var k1 []int64
			for _, r := range c.Rows {
				if r.PartitionKey == "k1" {
					k1 = append(k1, r.ID)
				}
			}
			require.Equal(t, ids, k1, "the head due now, its key in order behind it")

			for _, bad := range [][]string{
				{"keys", "--limit", "0"},
				{"keys", "--limit", strconv.Itoa(outbox.MaxBlockedPage + 1)},
				{"keys", "requeue", "--topic", "orders"},
				{"keys", "frobnicate"},
			} {
				r := f.cli.run(bad...)
				require.Equal(t, exitUsage, r.code, "%v: %s", bad, r.stderr)
				require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %s", r.stderr)
			}
			r := f.cli.run("keys", "skip", "--topic", "orders", "--key", "k1", "--yes")
			require.Equal(t, exitFailure, r.code, "nothing holds k1 now: %s", r.stdout)
			require.Contains(t, r.stderr, "not blocked")
		})
	}
}

func (c *cli) okJSONKeys() []opsjson.BlockedKey {
	c.t.Helper()
	var js opsjson.Keys
	require.NoError(c.t, json.Unmarshal([]byte(c.ok("keys", "--json")), &js))
	return js.Keys
}

// TestCLIWarnsOfUnknownVariables: a misspelt OUTBOX_* variable is named
// once on stderr, with the setting it probably meant; the command runs.
func TestCLIWarnsOfUnknownVariables(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	r := newCLI(t, bin, "OUTBOX_BATCHSIZE=50").run("ddl", "--dialect", "postgres")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "watermill-outbox: warning: OUTBOX_BATCHSIZE (did you mean OUTBOX_BATCH_SIZE?) is not a setting and is ignored\n", r.stderr)
	require.Contains(t, r.stdout, "CREATE TABLE")
	r = newCLI(t, bin, "OUTBOX_BATCH_SIZE=50", "OUTBOX_METRICS_ADDR=:0").run("ddl", "--dialect", "postgres")
	require.Empty(t, r.stderr, "known variables draw no warning")
}

// TestCLIRelayWrongAMQPPassword: a relay whose broker refuses its
// credentials says so at start, with the table empty, and /readyz is 503
// with the broker's reason; it keeps running (SIGTERM stops it, exit 0).
func TestCLIRelayWrongAMQPPassword(t *testing.T) {
	t.Parallel()
	good := testenv.AMQPURL(t)
	u, err := neturl.Parse(good)
	require.NoError(t, err)
	u.User = neturl.UserPassword(u.User.Username(), "not-the-password")
	bin := buildCLI(t)
	f := newFixture(t, bin, cliDBs[0])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "relay", "--metrics-addr", "127.0.0.1:0", "--amqp-url", u.String())
	cmd.Env = f.cli.env
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var log strings.Builder
	lines := bufio.NewScanner(stderr)
	waitLog := func(s string) string {
		t.Helper()
		for lines.Scan() {
			log.WriteString(lines.Text() + "\n")
			if strings.Contains(lines.Text(), s) {
				return lines.Text()
			}
		}
		t.Fatalf("the relay's log ended without %q:\n%s", s, log.String())
		return ""
	}
	addr := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(waitLog("relay: serving /metrics and /healthz"))
	require.NotNil(t, addr)
	line := waitLog("relay: cannot reach the destination")
	require.Contains(t, line, "username or password not allowed")
	require.NotContains(t, line, "not-the-password")
	resp, err := http.Get("http://" + addr[1] + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Contains(t, string(body), "destination: RabbitMQ at ")
	require.Contains(t, string(body), "username or password not allowed")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitLog("relay: stopped")
	_, _ = io.Copy(io.Discard, stderr)
	require.NoError(t, cmd.Wait(), "it kept running: exit 0 on SIGTERM")
}

// TestShortenKeepsTheReason: a long error keeps its end, where a wrapped
// error's reason is, within the column's width.
func TestShortenKeepsTheReason(t *testing.T) {
	long := "retry budget of 5 attempts exhausted: amqp: publish to orders.placed: declare queue: " +
		strings.Repeat("x", 80) + ` Exception (403) Reason: "ACCESS_REFUSED - queue name 'amq.orders' contains reserved prefix 'amq.*'"`
	got := shorten(long)
	require.Equal(t, lastErrorWidth, len([]rune(got)))
	require.True(t, strings.HasPrefix(got, "retry budget of 5 attempts"), got)
	require.True(t, strings.HasSuffix(got, "contains reserved prefix 'amq.*'\""), got)
	require.Equal(t, "short: as is", shorten("short:\n  as is"))
}
