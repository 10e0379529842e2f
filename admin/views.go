package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/opsjson"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// badRequest is input the handler refuses with 400, saying why.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error {
	return &badRequest{msg: fmt.Sprintf(format, args...)}
}

// listing is what one GET of the page or its JSON asks for.
type listing struct {
	topic                 string
	keysAfter, keysAfterK string
	deadAfter             int64
	limit                 int
}

// parseListing reads and checks the paging parameters.
func (h *handler) parseListing(q url.Values) (listing, error) {
	l := listing{topic: q.Get("topic"), keysAfter: q.Get("after_topic"), keysAfterK: q.Get("after_key"), limit: h.config.PageSize}
	if l.topic != "" {
		if err := outbox.ValidateTopic(l.topic); err != nil {
			return l, bad("topic: %s", err)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPage {
			return l, bad("limit: want 1 to %d, got %q", MaxPage, v)
		}
		l.limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return l, bad("after: want a row id (0 or more), got %q", v)
		}
		l.deadAfter = n
	}
	return l, nil
}

func (h *handler) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.config.Timeout)
}

// view is what the page shows.
type view struct {
	Writes    bool
	Topic     string
	Limit     int
	Stats     []outbox.TopicStats
	Keys      []outbox.BlockedKey
	NextKeys  string // query of the next page of keys, "" on the last
	Dead      []outbox.DeadRow
	NextDead  string
	Now       time.Time
	Done      string
	FirstPage string
}

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	l, err := h.parseListing(r.URL.Query())
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	v := view{Writes: h.config.AllowWrites, Topic: l.topic, Limit: l.limit, Now: time.Now(), Done: doneMessage(r.URL.Query())}
	st, err := h.store.Stats(ctx)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	v.Stats = st.Topics
	keys, next, err := h.keys(ctx, l)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	v.Keys = keys
	if next != nil {
		v.NextKeys = h.query(l, url.Values{"after_topic": {next.AfterTopic}, "after_key": {next.AfterKey}, "after": {strconv.FormatInt(l.deadAfter, 10)}})
	}
	dead, nextDead, err := h.dead(ctx, l)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	v.Dead = dead
	if nextDead != nil {
		v.NextDead = h.query(l, url.Values{"after": {strconv.FormatInt(*nextDead, 10)}, "after_topic": {l.keysAfter}, "after_key": {l.keysAfterK}})
	}
	v.FirstPage = h.query(l, nil)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pages.ExecuteTemplate(w, "page.html", v); err != nil {
		h.logger.Error("admin: render the page", err, nil)
	}
}

// query is the page's query string for l's topic and limit, plus more.
func (h *handler) query(l listing, more url.Values) string {
	q := url.Values{}
	if l.topic != "" {
		q.Set("topic", l.topic)
	}
	if l.limit != h.config.PageSize {
		q.Set("limit", strconv.Itoa(l.limit))
	}
	for k, vs := range more {
		if len(vs) > 0 && vs[0] != "" && vs[0] != "0" {
			q[k] = vs
		}
	}
	if len(q) == 0 {
		return "./"
	}
	return "./?" + q.Encode()
}

func (h *handler) keys(ctx context.Context, l listing) ([]outbox.BlockedKey, *opsjson.KeyCursor, error) {
	keys, err := h.store.BlockedKeys(ctx, outbox.BlockedQuery{Topic: l.topic, AfterTopic: l.keysAfter, AfterKey: l.keysAfterK, Limit: l.limit})
	if err != nil || len(keys) < l.limit {
		return keys, nil, err
	}
	last := keys[len(keys)-1]
	return keys, &opsjson.KeyCursor{AfterTopic: last.Topic, AfterKey: last.Key}, nil
}

func (h *handler) dead(ctx context.Context, l listing) ([]outbox.DeadRow, *int64, error) {
	rows, err := h.store.ListDead(ctx, outbox.DeadQuery{Topic: l.topic, AfterID: l.deadAfter, Limit: l.limit})
	if err != nil || len(rows) < l.limit {
		return rows, nil, err
	}
	last := rows[len(rows)-1].ID
	return rows, &last, nil
}

// doneMessage is the line the page shows after an action: from a fixed
// set, never text taken from the URL.
func doneMessage(q url.Values) string {
	id, err := strconv.ParseInt(q.Get("id"), 10, 64)
	if err != nil {
		return ""
	}
	verb := map[string]string{
		"requeue": "requeued: pending again, with a fresh retry budget", "purge": "purged: deleted for good",
		"requeue-key": "requeued: its key goes on from it, in order", "skip-key": "skipped (deleted): its key goes on without it",
	}[q.Get("done")]
	if verb == "" {
		return ""
	}
	return "Row " + strconv.FormatInt(id, 10) + " " + verb + "."
}

// JSON answers.

type topicJSON struct {
	Topic                    string  `json:"topic"`
	Pending                  int     `json:"pending"`
	Waiting                  int     `json:"waiting"`
	Leased                   int     `json:"leased"`
	Dead                     int     `json:"dead"`
	Backlog                  int64   `json:"backlog"`
	BacklogIsEstimate        bool    `json:"backlog_is_estimate"`
	BacklogCapped            bool    `json:"backlog_capped"`
	DeadCapped               bool    `json:"dead_capped"`
	OldestUndeliveredSeconds float64 `json:"oldest_undelivered_seconds"`
	OldestDeadSeconds        float64 `json:"oldest_dead_seconds"`
}

func (h *handler) apiStats(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		h.fail(w, r, http.StatusBadRequest, "stats takes no parameters")
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	st, err := h.store.Stats(ctx)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := struct {
		Topics []topicJSON `json:"topics"`
	}{Topics: []topicJSON{}}
	for _, t := range st.Topics {
		tj := topicJSON{Topic: t.Topic, Pending: t.Pending, Waiting: t.Waiting, Leased: t.Leased, Dead: t.Dead,
			Backlog: int64(t.Undelivered()), BacklogCapped: t.BacklogCapped, DeadCapped: t.DeadCapped,
			OldestUndeliveredSeconds: t.OldestPending.Seconds(), OldestDeadSeconds: t.OldestDead.Seconds()}
		if t.BacklogEstimate > 0 {
			tj.Backlog, tj.BacklogIsEstimate = t.BacklogEstimate, true
		}
		out.Topics = append(out.Topics, tj)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) apiKeys(w http.ResponseWriter, r *http.Request) {
	l, err := h.parseListing(r.URL.Query())
	if err == nil && r.URL.Query().Has("after") {
		err = bad("after: not a parameter of keys (after_topic and after_key are)")
	}
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	keys, next, err := h.keys(ctx, l)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := opsjson.NewKeys(keys, next)
	writeJSON(w, http.StatusOK, out)
}

type deadJSON struct {
	ID         int64     `json:"id"`
	UUID       string    `json:"uuid"`
	Topic      string    `json:"topic"`
	Key        string    `json:"key"`
	Attempts   int       `json:"attempts"`
	CreatedAt  time.Time `json:"created_at"`
	AgeSeconds float64   `json:"age_seconds"`
	LastError  string    `json:"last_error"`
}

func (h *handler) apiDead(w http.ResponseWriter, r *http.Request) {
	l, err := h.parseListing(r.URL.Query())
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	rows, next, err := h.dead(ctx, l)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := struct {
		Rows      []deadJSON `json:"rows"`
		NextAfter *int64     `json:"next_after"`
	}{Rows: []deadJSON{}, NextAfter: next}
	now := time.Now()
	for _, d := range rows {
		out.Rows = append(out.Rows, deadJSON{ID: d.ID, UUID: d.UUID, Topic: d.Topic, Key: d.PartitionKey, Attempts: d.Attempts,
			CreatedAt: d.CreatedAt.UTC(), AgeSeconds: now.Sub(d.CreatedAt).Seconds(), LastError: d.LastError})
	}
	writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers a refused request: JSON under api/, plain text elsewhere.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSON(w, code, map[string]string{"error": msg})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(http.StatusText(code) + ": " + msg + "\n"))
}

// internal answers 500 without the database's words (they may name
// hosts or users), which go to the log.
func (h *handler) internal(w http.ResponseWriter, r *http.Request, err error) {
	var br *badRequest
	if errors.As(err, &br) {
		h.fail(w, r, http.StatusBadRequest, br.msg)
		return
	}
	h.logger.Error("admin: request failed", err, nil)
	h.fail(w, r, http.StatusInternalServerError, "the outbox table could not be read or written; see the service's log")
}

// age renders a duration as an operator reads it: 850ms, 42s, 4m12s,
// 5h03m, 3d04h; "-" for none.
func age(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}
