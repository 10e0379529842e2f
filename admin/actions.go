package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/e0a82c8c/watermill-outbox/internal/escape"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// maxForm bounds an action's body.
const maxForm = 16 << 10

// act is one requested action: on a dead row (id) or a key.
type act struct {
	Action     string
	ID         int64
	Topic, Key string
	Verb       string // what the confirmation button says
	Row        *outbox.DeadRow
	Head       *outbox.BlockedKey
}

var verbs = map[string]string{"requeue": "Requeue", "purge": "Purge for good", "requeue-key": "Requeue the head", "skip-key": "Skip (delete) the head"}

// parseAct reads an action's fields from a query or a form.
func parseAct(get func(string) string) (act, error) {
	a := act{Action: get("action")}
	a.Verb = verbs[a.Action]
	if a.Verb == "" {
		return a, bad("action: want requeue, purge, requeue-key or skip-key, got %q", a.Action)
	}
	switch a.Action {
	case "requeue", "purge":
		id, err := strconv.ParseInt(get("id"), 10, 64)
		if err != nil || id < 1 {
			return a, bad("id: want a row id (a positive integer), got %q", get("id"))
		}
		a.ID = id
	default:
		a.Topic, a.Key = get("topic"), get("key")
		if err := outbox.ValidateTopic(a.Topic); err != nil {
			return a, bad("topic: %s", err)
		}
		if a.Key == "" || len(a.Key) > 255 {
			return a, bad("key: want 1 to 255 bytes, got %d", len(a.Key))
		}
	}
	return a, nil
}

// load finds what the action is about: 404 when there is nothing to act on.
func (h *handler) load(r *http.Request, a *act) (int, error) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	if a.ID != 0 {
		rows, err := h.store.ListDead(ctx, outbox.DeadQuery{IDs: []int64{a.ID}, Limit: 1})
		if err != nil {
			return http.StatusInternalServerError, err
		}
		if len(rows) == 0 {
			return http.StatusNotFound, fmt.Errorf("no dead row with id %d", a.ID)
		}
		a.Row = &rows[0]
		return 0, nil
	}
	head, err := h.store.BlockedKey(ctx, a.Topic, a.Key)
	if errors.Is(err, outbox.ErrNotBlocked) {
		return http.StatusNotFound, fmt.Errorf("key %q of topic %q is not blocked", escape.Control(a.Key), escape.Control(a.Topic))
	}
	if err != nil {
		return http.StatusInternalServerError, err
	}
	a.Head = &head
	return 0, nil
}

// confirm shows what an action would do and the button that does it.
func (h *handler) confirm(w http.ResponseWriter, r *http.Request) {
	if !h.config.AllowWrites {
		h.fail(w, r, http.StatusForbidden, "writes are disabled: this page is read-only")
		return
	}
	a, err := parseAct(r.URL.Query().Get)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if code, err := h.load(r, &a); err != nil {
		h.answer(w, r, code, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pages.ExecuteTemplate(w, "confirm.html", a); err != nil {
		h.logger.Error("admin: render the confirmation", err, nil)
	}
}

// action does a confirmed action: POST action (the page's forms, answered
// with a redirect to the page) or api/action (JSON).
func (h *handler) action(w http.ResponseWriter, r *http.Request) {
	if !h.config.AllowWrites {
		h.fail(w, r, http.StatusForbidden, "writes are disabled: this page is read-only")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		h.fail(w, r, http.StatusBadRequest, "a form of at most 16 KiB, url-encoded")
		return
	}
	a, err := parseAct(r.PostForm.Get)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if r.PostForm.Get("confirm") != "yes" {
		h.fail(w, r, http.StatusBadRequest, "confirm=yes is required: actions are confirmed first")
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	var id int64
	switch a.Action {
	case "requeue", "purge":
		do := h.store.Requeue
		if a.Action == "purge" {
			do = h.store.PurgeDead
		}
		n, err := do(ctx, a.ID)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		if n == 0 {
			h.fail(w, r, http.StatusNotFound, fmt.Sprintf("no dead row with id %d: nothing changed", a.ID))
			return
		}
		id = a.ID
	default:
		do := h.store.RequeueKey
		if a.Action == "skip-key" {
			do = h.store.SkipKey
		}
		done, err := do(ctx, a.Topic, a.Key)
		if errors.Is(err, outbox.ErrNotBlocked) {
			h.fail(w, r, http.StatusNotFound, fmt.Sprintf("key %q of topic %q is not blocked: nothing changed", escape.Control(a.Key), escape.Control(a.Topic)))
			return
		}
		if err != nil {
			h.internal(w, r, err)
			return
		}
		id = done.HeadID
	}
	h.logger.Info("admin: "+a.Action, map[string]any{"id": id, "topic": a.Topic, "key": a.Key})
	if r.URL.Path == "/api/action" {
		writeJSON(w, http.StatusOK, map[string]any{"done": a.Action, "id": id})
		return
	}
	// Relative to the action's own URL, so the page's prefix (which
	// http.StripPrefix took off) is kept; http.Redirect would root it.
	w.Header().Set("Location", "./?done="+a.Action+"&id="+strconv.FormatInt(id, 10))
	w.WriteHeader(http.StatusSeeOther)
}

func (h *handler) answer(w http.ResponseWriter, r *http.Request, code int, err error) {
	if code == http.StatusInternalServerError {
		h.internal(w, r, err)
		return
	}
	h.fail(w, r, code, err.Error())
}
