package admin_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/e0a82c8c/watermill-outbox/admin"
	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// chromium finds Debian's chromium, or skips the test (fails it with
// OUTBOX_REQUIRE_SERVICES=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "chromium not found: apt-get install -y chromium"
	if os.Getenv("OUTBOX_REQUIRE_SERVICES") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// recorder is the relay's destination: it records what it accepts.
type recorder struct {
	mu   sync.Mutex
	got  []string // payloads, in the order accepted
	seen chan struct{}
}

func (r *recorder) Publish(_ string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		r.got = append(r.got, string(m.Payload))
	}
	select {
	case r.seen <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) accepted() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

// TestBrowserRequeuesADeadRow drives headless Chromium through the page
// on PostgreSQL, under strict order: it sees a stuck key and a dead row
// holding its key, requeues the dead row through the confirmation form,
// the row is pending again, and a relay then delivers it before the row
// it held back. With OUTBOX_WRITE_SCREENSHOT=1 it writes the page's
// screenshot to docs/admin-page.png.
func TestBrowserRequeuesADeadRow(t *testing.T) {
	bin := chromium(t)
	db := testenv.Postgres(t)
	cfg := config.Config{Table: testenv.TableName(t), StrictOrder: true, PollingInterval: 20 * time.Millisecond}
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, nil)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, store.Migrate(ctx))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table) })
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	publish := func(topic, key, payload string) {
		m := message.NewMessage(watermill.NewUUID(), []byte(payload))
		m.Metadata.Set(outbox.PartitionKeyMetadataKey, key)
		require.NoError(t, pub.Publish(topic, m))
	}
	for i := range 3 {
		publish("orders.placed", "order-7", fmt.Sprint("order-7 #", i))
	}
	publish("payments.captured", "pay-9", "pay-9 #0")
	publish("payments.captured", "pay-9", "pay-9 #1")

	// The heads fail: order-7's backs off for an hour, pay-9's is dead.
	c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, StrictOrder: true})
	require.NoError(t, err)
	var stuck, dead int64
	var give []int64
	for _, r := range c.Rows {
		switch {
		case r.PartitionKey == "order-7" && stuck == 0:
			stuck = r.ID
			_, err = store.RecordFailure(ctx, c.Token, r.ID, "kafka server: Message was too large, server rejected it to avoid allocation error", time.Hour)
		case r.PartitionKey == "pay-9" && dead == 0:
			dead = r.ID
			_, err = store.MarkDead(ctx, c.Token, r.ID, "Exception (403) Reason: \"ACCESS_REFUSED - exchange 'amq.payments' in vhost '/' refused\"")
		default:
			give = append(give, r.ID)
		}
		require.NoError(t, err)
	}
	_, err = store.Release(ctx, c.Token, give)
	require.NoError(t, err)
	require.NotZero(t, stuck)
	require.NotZero(t, dead)

	page, err := admin.NewHandler(store, admin.Config{AllowWrites: true}, nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/outbox/", http.StripPrefix("/outbox", page))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	cdp := startChromium(t, bin)
	cdp.navigate(srv.URL + "/outbox/")
	text := cdp.waitText("Dead rows", "pay-9")
	require.Contains(t, text, "order-7", "the stuck key")
	require.Contains(t, text, "kafka server: Message was too large", "its head's error")
	require.Contains(t, text, "ACCESS_REFUSED", "the dead row's error")
	if os.Getenv("OUTBOX_WRITE_SCREENSHOT") == "1" {
		png := cdp.screenshot()
		require.NoError(t, os.WriteFile(filepath.Join("..", "docs", "admin-page.png"), png, 0o644))
	}

	// Requeue the dead row: its link, then the confirmation's button (a
	// form POST from the page's own origin).
	cdp.eval(`document.querySelector('#dead-` + strconv.FormatInt(dead, 10) + ` a[href^="confirm?action=requeue&"]').click()`)
	cdp.waitText("Confirm: Requeue", "ACCESS_REFUSED")
	cdp.eval(`document.getElementById('confirm').click()`)
	cdp.waitText("Row " + strconv.FormatInt(dead, 10) + " requeued")

	var state string
	require.NoError(t, db.QueryRow(`SELECT state FROM `+cfg.Table+` WHERE id = $1`, dead).Scan(&state))
	require.Equal(t, "pending", state, "pending again")

	// The relay delivers pay-9 in order: the requeued head first.
	dest := &recorder{seen: make(chan struct{}, 1)}
	fwd, err := forwarder.NewForwarder(store, dest, forwarder.Config{}, nil)
	require.NoError(t, err)
	testenv.Start(t, "forwarder", fwd)
	deadline := time.After(30 * time.Second)
	for len(dest.accepted()) < 2 {
		select {
		case <-dest.seen:
		case <-deadline:
			t.Fatalf("the relay delivered %v", dest.accepted())
		}
	}
	require.Equal(t, []string{"pay-9 #0", "pay-9 #1"}, dest.accepted(), "the requeued head, then the row it held; order-7 still waits")
}

// devtools is a page of headless Chromium driven over the DevTools
// protocol.
type devtools struct {
	t    *testing.T
	ws   *websocket.Conn
	next int
}

// removeProfile removes Chromium's profile directory, trying again for a
// few seconds while the killed helpers' last writes land; a directory
// left behind is logged, not a failure of the test.
func removeProfile(t *testing.T, dir string) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil {
			return
		}
		select {
		case <-deadline:
			t.Logf("chromium profile %s left behind: %v", dir, err)
			return
		case <-tick.C:
		}
	}
}

var listening = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

func startChromium(t *testing.T, bin string) *devtools {
	t.Helper()
	// The profile directory is not t.TempDir: Chromium's helper processes
	// may still be writing to it for a moment after the browser is
	// killed, and TempDir's cleanup fails the test on "directory not
	// empty". Chromium runs in a process group of its own, killed whole.
	dir, err := os.MkdirTemp("", "outbox-chromium-")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--window-size=1280,860", "--hide-scrollbars",
		"--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir="+dir, "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers that outlived the browser
		removeProfile(t, dir)
	})
	found := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			if m := listening.FindStringSubmatch(lines.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(60 * time.Second):
		t.Fatal("chromium did not start its DevTools endpoint")
	}
	// The page target of about:blank.
	host := strings.TrimPrefix(browserURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	resp, err := http.Get("http://" + host + "/json/list")
	require.NoError(t, err)
	var targets []struct {
		Type string `json:"type"`
		WS   string `json:"webSocketDebuggerUrl"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&targets))
	resp.Body.Close()
	var pageURL string
	for _, tg := range targets {
		if tg.Type == "page" {
			pageURL = tg.WS
		}
	}
	require.NotEmpty(t, pageURL, "a page target")
	ws, err := websocket.Dial(pageURL, "", "http://"+host)
	require.NoError(t, err)
	ws.MaxPayloadBytes = 64 << 20
	t.Cleanup(func() { _ = ws.Close() })
	return &devtools{t: t, ws: ws}
}

// call sends one command and returns its result, skipping events.
func (d *devtools) call(method string, params any) json.RawMessage {
	d.t.Helper()
	d.next++
	id := d.next
	require.NoError(d.t, websocket.JSON.Send(d.ws, map[string]any{"id": id, "method": method, "params": params}))
	require.NoError(d.t, d.ws.SetReadDeadline(time.Now().Add(30*time.Second)))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		require.NoError(d.t, websocket.JSON.Receive(d.ws, &msg), method)
		if msg.ID != id {
			continue
		}
		require.Nil(d.t, msg.Error, "%s: %+v", method, msg.Error)
		return msg.Result
	}
}

func (d *devtools) navigate(url string) {
	d.t.Helper()
	d.call("Page.navigate", map[string]any{"url": url})
}

// eval evaluates a JavaScript expression in the page (DevTools runs it
// whatever the page's CSP, which allows no script of the page's own) and
// returns its value as a string.
func (d *devtools) eval(expr string) string {
	d.t.Helper()
	var out struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
	}
	require.NoError(d.t, json.Unmarshal(d.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &out))
	s, _ := out.Result.Value.(string)
	return s
}

// waitText waits until the loaded page's text holds every one of want,
// and returns it.
func (d *devtools) waitText(want ...string) string {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		text := d.eval(`document.readyState === "complete" && document.body ? document.body.innerText : ""`)
		ok := text != ""
		for _, w := range want {
			ok = ok && strings.Contains(text, w)
		}
		if ok {
			return text
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the page never showed %q; it shows:\n%s", want, text)
		}
		<-tick.C
	}
}

func (d *devtools) screenshot() []byte {
	d.t.Helper()
	var out struct {
		Data string `json:"data"`
	}
	require.NoError(d.t, json.Unmarshal(d.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}), &out))
	png, err := base64.StdEncoding.DecodeString(out.Data)
	require.NoError(d.t, err)
	require.Equal(d.t, "\x89PNG", string(png[:4]))
	return png
}
