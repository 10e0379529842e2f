package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/admin"
	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// fixture is a table with a key held by a failing head (orders/k1: rows
// 1, 2, 3) and a dead row (payments, row 4), and the page over it,
// mounted under /outbox/.
type fixture struct {
	t      *testing.T
	store  *outbox.SQLStore
	srv    *httptest.Server
	head   int64 // orders/k1's head
	deadID int64
}

func newFixture(t *testing.T, writes bool) *fixture {
	t.Helper()
	db := testenv.Postgres(t)
	table := testenv.TableName(t)
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: table}}, nil)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, store.Migrate(ctx))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	for i := range 3 {
		m := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		m.Metadata.Set(outbox.PartitionKeyMetadataKey, "k1")
		require.NoError(t, pub.Publish("orders", m))
	}
	require.NoError(t, pub.Publish("payments", message.NewMessage(watermill.NewUUID(), []byte("p"))))
	f := &fixture{t: t, store: store}
	c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.NoError(t, err)
	var give []int64
	for _, r := range c.Rows {
		switch {
		case r.Topic == "payments":
			f.deadID = r.ID
			_, err = store.MarkDead(ctx, c.Token, r.ID, "amqp: <b>refused</b>\n\x1b[31mred")
		case f.head == 0:
			f.head = r.ID
			_, err = store.RecordFailure(ctx, c.Token, r.ID, "kafka: too large", time.Hour)
		default:
			give = append(give, r.ID)
		}
		require.NoError(t, err)
	}
	_, err = store.Release(ctx, c.Token, give)
	require.NoError(t, err)
	require.NotZero(t, f.head)
	require.NotZero(t, f.deadID)

	h, err := admin.NewHandler(store, admin.Config{AllowWrites: writes}, nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/outbox/", http.StripPrefix("/outbox", h))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (f *fixture) get(path string) (int, string) {
	f.t.Helper()
	resp, err := client.Get(f.srv.URL + "/outbox/" + path)
	require.NoError(f.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(f.t, err)
	return resp.StatusCode, string(b)
}

// post sends form as a browser on the page's own origin would, with
// headers changed by hdr.
func (f *fixture) post(path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/outbox/"+path, strings.NewReader(form.Encode()))
	require.NoError(f.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", f.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := client.Do(req)
	require.NoError(f.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(f.t, err)
	return resp, string(b)
}

// state is the row's state, "" when it is gone.
func (f *fixture) state(id int64) string {
	f.t.Helper()
	var s string
	err := f.store.DB().QueryRow(`SELECT state || CASE WHEN waiting = 1 THEN '/waiting' ELSE '' END FROM `+f.store.Config().Table+` WHERE id = $1`, id).Scan(&s)
	if err != nil {
		return ""
	}
	return s
}

func TestPageShowsTheTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	code, body := f.get("")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `<td>orders</td><td>k1</td><td class="n">`+strconv.FormatInt(f.head, 10)+`</td><td>waiting</td>`)
	require.Contains(t, body, `id="dead-`+strconv.FormatInt(f.deadID, 10)+`"`)
	require.Contains(t, body, `amqp: &lt;b&gt;refused&lt;/b&gt;\n\x1b[31mred`, "HTML and control characters escaped")
	require.NotContains(t, body, "\x1b")
	require.Contains(t, body, "Read-only.")
	require.NotContains(t, body, "confirm?", "no actions offered read-only")
	require.Contains(t, body, `href="assets/style.css"`)
	require.NotContains(t, body, "<script", "no script")

	code, css := f.get("assets/style.css")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, css, "table")

	resp, err := client.Get(f.srv.URL + "/outbox/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
}

func TestJSONEndpoints(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	var st struct {
		Topics []struct {
			Topic   string `json:"topic"`
			Pending int    `json:"pending"`
			Waiting int    `json:"waiting"`
			Dead    int    `json:"dead"`
			Backlog int64  `json:"backlog"`
		} `json:"topics"`
	}
	code, body := f.get("api/stats")
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Len(t, st.Topics, 2)
	require.Equal(t, "orders", st.Topics[0].Topic)
	require.Equal(t, [3]int{2, 1, 0}, [3]int{st.Topics[0].Pending, st.Topics[0].Waiting, st.Topics[0].Dead})
	require.Equal(t, int64(3), st.Topics[0].Backlog)
	require.Equal(t, 1, st.Topics[1].Dead)

	var keys struct {
		Keys []struct {
			Key    string `json:"key"`
			HeadID int64  `json:"head_id"`
			Behind int    `json:"behind"`
		} `json:"keys"`
		Next *struct{} `json:"next"`
	}
	code, body = f.get("api/keys")
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, json.Unmarshal([]byte(body), &keys))
	require.Len(t, keys.Keys, 1)
	require.Equal(t, f.head, keys.Keys[0].HeadID)
	require.Equal(t, 2, keys.Keys[0].Behind)
	require.Nil(t, keys.Next)

	var dead struct {
		Rows []struct {
			ID        int64  `json:"id"`
			LastError string `json:"last_error"`
		} `json:"rows"`
	}
	code, body = f.get("api/dead?topic=payments&limit=1")
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, json.Unmarshal([]byte(body), &dead))
	require.Len(t, dead.Rows, 1)
	require.Equal(t, "amqp: <b>refused</b>\n\x1b[31mred", dead.Rows[0].LastError, "JSON as stored")
}

// TestBadInputChangesNothing: every refused request gets a 4xx that says
// why, and the table is as before.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	ro := newFixture(t, false)
	f := newFixture(t, true)
	requeue := url.Values{"action": {"requeue"}, "id": {strconv.FormatInt(f.deadID, 10)}, "confirm": {"yes"}}
	for _, tc := range []struct {
		name string
		f    *fixture
		get  string
		path string
		form url.Values
		hdr  map[string]string
		code int
		says string
	}{
		{name: "page too large", f: f, get: "?limit=100000", code: 400, says: "limit"},
		{name: "keys page too large", f: f, get: "api/keys?limit=501", code: 400, says: "limit"},
		{name: "dead page of zero", f: f, get: "api/dead?limit=0", code: 400, says: "limit"},
		{name: "bad cursor", f: f, get: "api/dead?after=-1", code: 400, says: "after"},
		{name: "bad topic", f: f, get: "api/keys?topic=" + url.QueryEscape(strings.Repeat("t", 300)), code: 400, says: "topic"},
		{name: "unknown path", f: f, get: "api/nothing", code: 404},
		{name: "confirm read-only", f: ro, get: "confirm?action=requeue&id=1", code: 403, says: "read-only"},
		{name: "confirm unknown id", f: f, get: "confirm?action=requeue&id=999999", code: 404, says: "no dead row"},
		{name: "write with writes off", f: ro, path: "action", form: requeue, code: 403, says: "read-only"},
		{name: "api write with writes off", f: ro, path: "api/action", form: requeue, code: 403, says: "read-only"},
		{name: "cross-site POST", f: f, path: "action", form: requeue, hdr: map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, code: 403, says: "cross-origin"},
		{name: "foreign Origin without Sec-Fetch-Site", f: f, path: "api/action", form: requeue, hdr: map[string]string{"Sec-Fetch-Site": "", "Origin": "https://evil.example"}, code: 403, says: "cross-origin"},
		{name: "unconfirmed", f: f, path: "action", form: url.Values{"action": {"requeue"}, "id": {strconv.FormatInt(f.deadID, 10)}}, code: 400, says: "confirm"},
		{name: "unknown id", f: f, path: "api/action", form: url.Values{"action": {"requeue"}, "id": {"999999"}, "confirm": {"yes"}}, code: 404, says: "no dead row"},
		{name: "a pending row is not dead", f: f, path: "api/action", form: url.Values{"action": {"purge"}, "id": {strconv.FormatInt(f.head+1, 10)}, "confirm": {"yes"}}, code: 404, says: "no dead row"},
		{name: "id not a number", f: f, path: "api/action", form: url.Values{"action": {"purge"}, "id": {"1 OR 1=1"}, "confirm": {"yes"}}, code: 400, says: "id"},
		{name: "unknown action", f: f, path: "api/action", form: url.Values{"action": {"drop"}, "id": {"1"}, "confirm": {"yes"}}, code: 400, says: "action"},
		{name: "key not blocked", f: f, path: "api/action", form: url.Values{"action": {"skip-key"}, "topic": {"orders"}, "key": {"k9"}, "confirm": {"yes"}}, code: 404, says: "not blocked"},
		{name: "huge form", f: f, path: "api/action", form: url.Values{"action": {"requeue"}, "pad": {strings.Repeat("x", 20000)}}, code: 400, says: "16 KiB"},
		{name: "GET on an action", f: f, get: "action?action=requeue&id=1&confirm=yes", code: 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			var body string
			if tc.path == "" {
				code, body = tc.f.get(tc.get)
			} else {
				var resp *http.Response
				resp, body = tc.f.post(tc.path, tc.form, tc.hdr)
				code = resp.StatusCode
			}
			require.Equal(t, tc.code, code, body)
			require.Contains(t, body, tc.says)
		})
	}
	for _, fx := range []*fixture{ro, f} {
		require.Equal(t, "dead", fx.state(fx.deadID), "the dead row is still dead")
		require.Equal(t, "pending/waiting", fx.state(fx.head), "the head still waits")
		require.Equal(t, "pending", fx.state(fx.head+1))
	}
}

// TestActionsWithWrites: the confirmation page shows the row and a form;
// its POST requeues the dead row and redirects back; a key's head is
// requeued through the JSON endpoint, and the key then goes in order.
func TestActionsWithWrites(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	code, body := f.get("")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "confirm?action=requeue&amp;id="+strconv.FormatInt(f.deadID, 10))

	code, body = f.get("confirm?action=requeue&id=" + strconv.FormatInt(f.deadID, 10))
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `<form method="post" action="action">`)
	require.Contains(t, body, `name="confirm" value="yes"`)
	require.Equal(t, "dead", f.state(f.deadID), "confirming is not doing")

	resp, body := f.post("action", url.Values{"action": {"requeue"}, "id": {strconv.FormatInt(f.deadID, 10)}, "confirm": {"yes"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, body)
	require.Equal(t, "./?done=requeue&id="+strconv.FormatInt(f.deadID, 10), resp.Header.Get("Location"))
	require.Equal(t, "pending", f.state(f.deadID))
	_, body = f.get("?done=requeue&id=" + strconv.FormatInt(f.deadID, 10))
	require.Contains(t, body, "Row "+strconv.FormatInt(f.deadID, 10)+" requeued")

	resp, body = f.post("api/action", url.Values{"action": {"requeue-key"}, "topic": {"orders"}, "key": {"k1"}, "confirm": {"yes"}}, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.JSONEq(t, `{"done":"requeue-key","id":`+strconv.FormatInt(f.head, 10)+`}`, body)
	c, err := f.store.Claim(context.Background(), relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.NoError(t, err)
	var k1 []int64
	for _, r := range c.Rows {
		if r.PartitionKey == "k1" {
			k1 = append(k1, r.ID)
		}
	}
	require.Equal(t, []int64{f.head, f.head + 1, f.head + 2}, k1, "the head first, then its key in order")
}

func TestNewHandlerRefusesBadConfig(t *testing.T) {
	_, err := admin.NewHandler(nil, admin.Config{}, nil)
	require.Error(t, err)
	var nilStore *outbox.SQLStore
	_, err = admin.NewHandler(nilStore, admin.Config{}, nil)
	require.Error(t, err)
	_, err = admin.NewHandler(&outbox.SQLStore{}, admin.Config{PageSize: admin.MaxPage + 1}, nil)
	require.ErrorContains(t, err, "PageSize")
}
