// Package admin is a web page for operating a watermill-outbox table: per
// topic the backlog, waiting, leased and dead rows and their oldest ages,
// the keys held back by a failing head, and the dead rows with their
// errors, paged; with writes enabled, requeue, skip and purge actions,
// each confirmed on a page of its own. The same figures are served as
// JSON under api/.
//
// Mount the handler under a prefix of your own service, behind its own
// authentication (the page has none):
//
//	h, err := admin.NewHandler(store, admin.Config{AllowWrites: true}, logger)
//	mux.Handle("/outbox/", requireAdmin(http.StripPrefix("/outbox", h)))
//
// It is read-only unless Config.AllowWrites is set; every POST must come
// from the page's own origin (Sec-Fetch-Site, else Origin, as
// net/http.CrossOriginProtection checks them). The page is HTML rendered
// on the server with embedded assets: no script, no CDN, no build step.
package admin

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/e0a82c8c/watermill-outbox/internal/escape"
	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Store is what the page reads and, with writes enabled, changes.
// *watermilloutbox.SQLStore implements it.
type Store interface {
	Stats(ctx context.Context) (outbox.Stats, error)
	BlockedKeys(ctx context.Context, q outbox.BlockedQuery) ([]outbox.BlockedKey, error)
	BlockedKey(ctx context.Context, topic, key string) (outbox.BlockedKey, error)
	ListDead(ctx context.Context, q outbox.DeadQuery) ([]outbox.DeadRow, error)
	Requeue(ctx context.Context, ids ...int64) (int, error)
	PurgeDead(ctx context.Context, ids ...int64) (int, error)
	RequeueKey(ctx context.Context, topic, key string) (outbox.KeyAction, error)
	SkipKey(ctx context.Context, topic, key string) (outbox.KeyAction, error)
}

// MaxPage is the largest page of keys or dead rows the page and the JSON
// endpoints return.
const MaxPage = 500

// Config configures NewHandler.
type Config struct {
	// AllowWrites enables the requeue, skip and purge actions. Default
	// and zero (false): read-only; every action answers 403 and changes
	// nothing.
	AllowWrites bool

	// PageSize is how many blocked keys and dead rows the page shows at a
	// time. Default 50; zero means the default. At most MaxPage.
	PageSize int

	// Timeout bounds the database work of one request. Default 10s; zero
	// means the default. Must not be negative.
	Timeout time.Duration
}

func (c *Config) setDefaults() {
	if c.PageSize == 0 {
		c.PageSize = 50
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
}

// Validate reports a bad field, by name.
func (c Config) Validate() error {
	var errs []error
	if c.PageSize < 1 || c.PageSize > MaxPage {
		errs = append(errs, fmt.Errorf("PageSize: must be between 1 and %d, got %d", MaxPage, c.PageSize))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("Timeout: must not be negative, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

//go:embed assets
var assets embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"age":       age,
	"printable": escape.Control,
}).ParseFS(assets, "assets/*.html"))

// handler serves the page, its assets and its JSON.
type handler struct {
	store  Store
	config Config
	logger watermill.LoggerAdapter
	mux    *http.ServeMux
}

// NewHandler returns the page over store. Mount it under a prefix with
// http.StripPrefix, behind your service's authentication. A nil logger
// logs nothing.
func NewHandler(store Store, config Config, logger watermill.LoggerAdapter) (http.Handler, error) {
	if nilcheck.IsNil(store) {
		return nil, errors.New("admin: store is nil")
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("admin: invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	h := &handler{store: store, config: config, logger: logger, mux: http.NewServeMux()}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	h.mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(static)))
	h.mux.HandleFunc("GET /{$}", h.page)
	h.mux.HandleFunc("GET /confirm", h.confirm)
	h.mux.HandleFunc("POST /action", h.action)
	h.mux.HandleFunc("GET /api/stats", h.apiStats)
	h.mux.HandleFunc("GET /api/keys", h.apiKeys)
	h.mux.HandleFunc("GET /api/dead", h.apiDead)
	h.mux.HandleFunc("POST /api/action", h.action)

	// Cross-site POSTs are refused before anything else looks at them.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, http.StatusForbidden, "cross-origin request refused: actions are taken from this page only")
	}))
	return secure(cop.Handler(h.mux)), nil
}

// secure sets the headers every answer carries: nothing cached, the page
// never framed (no clickjacking of its buttons), no script at all.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		next.ServeHTTP(w, r)
	})
}
