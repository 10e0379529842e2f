// Command quickstart runs the outbox end to end and checks its promise.
//
// Ten orders are written, each in one transaction with its OrderPlaced
// integration event (watermilloutbox.EventBus); every fourth transaction is
// rolled back on purpose. A forwarder relays the committed events to a
// broker, the program consumes them back from it, and it exits 0 only if
// every committed order arrived and no rolled-back one did.
//
// With no environment it needs nothing: SQLite in a temporary directory and
// Watermill's in-process gochannel. OUTBOX_DATABASE_URL (postgres://…, or a
// MySQL DSN such as root@tcp(127.0.0.1:3306)/test or mysql://…) and
// OUTBOX_KAFKA_BROKERS or OUTBOX_AMQP_URL run the same program against real
// servers; the OUTBOX_* relay settings of package config apply too.
//
// Exit codes: 0 all good, 1 events lost or unexpected (or another runtime
// failure), 2 bad or unreachable settings.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const (
	orderCount     = 10
	rollbackEvery  = 4 // every 4th transaction is rolled back on purpose
	receiveTimeout = 30 * time.Second
	// demoPollingInterval replaces the 1 s default so the demo is snappy; an
	// explicit OUTBOX_POLLING_INTERVAL_SECONDS wins. With the Notifier
	// below, polling is only the fallback.
	demoPollingInterval = 50 * time.Millisecond
	// demoNotifyInterval: a publisher in the relay's process tells it of
	// each Publish inside a transaction, and the relay looks one
	// NotifyInterval later, when the transaction has committed. The demo's
	// transactions commit within a millisecond; an explicit
	// OUTBOX_NOTIFY_INTERVAL_SECONDS wins.
	demoNotifyInterval = time.Millisecond
)

// OrderPlaced is consumed by other services, so it is an integration event:
// it goes through the outbox, in the transaction that writes the order.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

func (OrderPlaced) IntegrationEvent() {}

// PartitionKey keeps one order's events in order (and is the Kafka key).
func (e OrderPlaced) PartitionKey() string { return e.OrderID }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "quickstart: "+oneLine(err.Error()))
	var se *settingError
	if errors.As(err, &se) {
		os.Exit(2)
	}
	os.Exit(1)
}

// settingError is a bad or unreachable setting: exit code 2.
type settingError struct{ msg string }

func (e *settingError) Error() string { return e.msg }

func settingErrorf(format string, args ...any) error {
	return &settingError{msg: fmt.Sprintf(format, args...)}
}

// oneLine keeps multi-error messages (errors.Join) on a single line.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

func run(ctx context.Context) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return &settingError{msg: strings.TrimPrefix(err.Error(), "config: ")}
	}
	pollNote := "OUTBOX_POLLING_INTERVAL_SECONDS"
	if os.Getenv("OUTBOX_POLLING_INTERVAL_SECONDS") == "" {
		cfg.PollingInterval = demoPollingInterval
		pollNote += " unset, demo default"
	}
	if os.Getenv("OUTBOX_NOTIFY_INTERVAL_SECONDS") == "" {
		cfg.NotifyInterval = demoNotifyInterval
	}
	logger := newLogger()

	db, err := openDatabase(ctx)
	if err != nil {
		return err
	}
	defer db.close()
	br, err := openBroker(ctx, logger)
	if err != nil {
		return err
	}
	defer br.close()

	// On real servers every run gets its own tables and topic, so runs never
	// see each other's rows or messages, and they are removed afterwards.
	runID := randomID()
	ordersTable, topic := "orders", "OrderPlaced"
	if db.shared {
		ordersTable = "quickstart_orders_" + runID
		if os.Getenv("OUTBOX_TABLE") == "" {
			cfg.Table = "quickstart_outbox_" + runID
		}
	}
	if br.shared {
		topic = "quickstart.OrderPlaced." + runID
	}
	fmt.Printf("quickstart: database %s, broker %s, topic %s\n", db.desc, br.desc, topic)
	fmt.Printf("quickstart: outbox table %s, polling interval %s (%s)\n", cfg.Table, cfg.PollingInterval, pollNote)

	// The dialect, the table and every setting are stated once, here: the
	// publisher and the relay take them from the store.
	store, err := watermilloutbox.NewSQLStore(db.db, watermilloutbox.SQLStoreConfig{Dialect: db.dialect, Outbox: cfg}, logger)
	if err != nil {
		return err
	}
	if err := migrate(ctx, db, store, ordersTable); err != nil {
		return err
	}
	if db.shared {
		defer db.dropTables(ordersTable, cfg.Table, os.Getenv("OUTBOX_TABLE") == "")
	}

	// Consume before anything is relayed, so nothing is missed.
	consumeCtx, stopConsuming := context.WithCancel(ctx)
	deliveries := make(chan delivery, 2*orderCount)
	if err := br.consume(consumeCtx, topic, deliveries); err != nil {
		stopConsuming()
		return fmt.Errorf("consume %s: %w", topic, err)
	}
	defer br.cleanup(topic)
	defer stopConsuming()

	// The forwarder runs from before the first commit, so the latency
	// printed is commit → received.
	fwd, err := forwarder.NewForwarder(store, br.publisher, forwarder.Config{}, logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := fwd.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "quickstart: close forwarder: "+oneLine(err.Error()))
		}
	}()
	fwdErr := make(chan error, 1)
	go func() { fwdErr <- fwd.Run(ctx) }()
	select {
	case <-fwd.Running():
	case err := <-fwdErr:
		return fmt.Errorf("forwarder: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}

	// Notifier: publisher and relay share this process, so each commit
	// wakes the relay at once (about a millisecond from commit to broker)
	// instead of at its next poll, on SQLite and MySQL too.
	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		return err
	}
	defer pub.Close()
	bus, err := watermilloutbox.NewEventBus(pub, watermilloutbox.EventBusConfig{
		GenerateTopic: func(string, any) (string, error) { return topic, nil },
	}, logger)
	if err != nil {
		return err
	}

	l := &ledger{committed: map[string]time.Time{}, rolledBack: map[string]bool{}}
	writeErr := make(chan error, 1)
	go func() { writeErr <- writeOrders(ctx, db, bus, ordersTable, l) }()
	return collect(ctx, l, deliveries, writeErr, fwdErr, cfg.PollingInterval)
}

// ledger is what the writer did, as the collector checks it. mu is held
// across each commit and its bookkeeping, so a delivery that overtakes the
// bookkeeping waits for it instead of looking unknown.
type ledger struct {
	mu         sync.Mutex
	committed  map[string]time.Time // order id → when Commit returned
	rolledBack map[string]bool
}

func writeOrders(ctx context.Context, db *database, bus *watermilloutbox.EventBus, ordersTable string, l *ledger) error {
	customers := []string{"ada", "grace", "alan", "barbara", "edsger"}
	for i := 1; i <= orderCount; i++ {
		ev := OrderPlaced{
			OrderID:    fmt.Sprintf("order-%02d", i),
			Customer:   customers[i%len(customers)],
			TotalCents: int64(1000 + 250*i),
		}
		rollback := i%rollbackEvery == 0
		l.mu.Lock()
		err := placeOrder(ctx, db, bus, ordersTable, ev, rollback)
		if err == nil {
			if rollback {
				l.rolledBack[ev.OrderID] = true
			} else {
				l.committed[ev.OrderID] = time.Now()
			}
		}
		l.mu.Unlock()
		if err != nil {
			return fmt.Errorf("place %s: %w", ev.OrderID, err)
		}
		if rollback {
			fmt.Printf("rolled back order=%s on purpose: its OrderPlaced must never arrive\n", ev.OrderID)
		} else {
			fmt.Printf("committed   order=%s\n", ev.OrderID)
		}
		// A short pause lets relaying interleave with writing.
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// placeOrder writes the order row and its event in one transaction.
func placeOrder(ctx context.Context, db *database, bus *watermilloutbox.EventBus, ordersTable string, ev OrderPlaced, rollback bool) error {
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	insert := fmt.Sprintf("INSERT INTO %s (id, customer, total_cents) VALUES (%s, %s, %s)",
		ordersTable, db.placeholder(1), db.placeholder(2), db.placeholder(3))
	if _, err := tx.ExecContext(ctx, insert, ev.OrderID, ev.Customer, ev.TotalCents); err != nil {
		return err
	}
	// Written to the outbox in tx: if tx rolls back, so does the event.
	if err := bus.PublishTx(ctx, tx, ev); err != nil {
		return err
	}
	if rollback {
		return tx.Rollback()
	}
	return tx.Commit()
}

// collect checks the deliveries against the ledger until every committed
// order arrived, then waits a little longer for strays.
func collect(ctx context.Context, l *ledger, deliveries <-chan delivery, writeErr, fwdErr <-chan error, poll time.Duration) error {
	var (
		received              = map[string]bool{}
		unexpected, dupes     int
		writing               = true
		timeout               = time.NewTimer(receiveTimeout)
		settle                <-chan time.Time
		committed, rolledBack int
	)
	defer timeout.Stop()
	handle := func(d delivery) {
		var ev OrderPlaced
		if err := json.Unmarshal(d.payload, &ev); err != nil {
			unexpected++
			fmt.Printf("UNEXPECTED message uuid=%s: payload is not an OrderPlaced: %v\n", d.uuid, err)
			return
		}
		l.mu.Lock()
		at, ok := l.committed[ev.OrderID]
		rb := l.rolledBack[ev.OrderID]
		l.mu.Unlock()
		switch {
		case rb:
			unexpected++
			fmt.Printf("UNEXPECTED %s order=%s uuid=%s: this transaction was rolled back\n", d.name, ev.OrderID, d.uuid)
		case !ok:
			unexpected++
			fmt.Printf("UNEXPECTED %s order=%s uuid=%s: no such order was written\n", d.name, ev.OrderID, d.uuid)
		case received[ev.OrderID]:
			dupes++ // at-least-once: consumers drop these by UUID
			fmt.Printf("duplicate %s order=%s uuid=%s\n", d.name, ev.OrderID, d.uuid)
		default:
			received[ev.OrderID] = true
			fmt.Printf("received %s order=%s uuid=%s commit→broker=%.1fms\n",
				d.name, ev.OrderID, d.uuid, float64(d.at.Sub(at).Microseconds())/1000)
		}
	}

	var failure error
loop:
	for {
		if !writing && settle == nil && len(received) == committed {
			// Everything arrived; give strays (a rolled-back event, a
			// duplicate) a few polls to show up before judging.
			settle = time.After(2*poll + 200*time.Millisecond)
		}
		select {
		case d := <-deliveries:
			handle(d)
		case err := <-writeErr:
			if err != nil {
				return err
			}
			writing = false
			l.mu.Lock()
			committed, rolledBack = len(l.committed), len(l.rolledBack)
			l.mu.Unlock()
		case err := <-fwdErr:
			return fmt.Errorf("forwarder stopped: %v", err)
		case <-settle:
			break loop
		case <-timeout.C:
			failure = fmt.Errorf("timed out after %s waiting for the committed events", receiveTimeout)
			break loop
		case <-ctx.Done():
			return errors.New("interrupted")
		}
	}
	if writing { // timed out while still writing
		return failure
	}
	lost := committed - len(received)
	fmt.Printf("quickstart: committed=%d rolled_back=%d received=%d lost=%d unexpected=%d",
		committed, rolledBack, len(received), lost, unexpected)
	if dupes > 0 {
		fmt.Printf(" duplicates=%d", dupes)
	}
	fmt.Println()
	switch {
	case failure != nil:
		return failure
	case lost > 0 || unexpected > 0:
		return fmt.Errorf("%d committed event(s) lost, %d unexpected", lost, unexpected)
	}
	return nil
}

// delivery is one message consumed back from the broker, stamped on arrival.
type delivery struct {
	uuid, name string
	payload    []byte
	at         time.Time
}

func migrate(ctx context.Context, db *database, store *watermilloutbox.SQLStore, ordersTable string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	ddl := "CREATE TABLE IF NOT EXISTS " + ordersTable + " (id VARCHAR(64) PRIMARY KEY, customer VARCHAR(255) NOT NULL, total_cents BIGINT NOT NULL)"
	if _, err := db.db.ExecContext(ctx, ddl); err != nil {
		return fmt.Errorf("create %s: %w", ordersTable, err)
	}
	return nil
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
