package inbox_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// roundTrips counts what a pgx connection sends to the server and waits
// for: each query, each batch, each prepare.
type roundTrips struct{ n atomic.Int32 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}
func (r *roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// Over a pgx pool the record rides with the BEGIN: a delivery whose handler
// makes one statement takes the three round trips of that statement in a
// transaction of its own (begin, statement, commit), not four.
func TestPgxDeliveryRoundTrips(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(testenv.PostgresDSN())
	require.NoError(t, err)
	rt := &roundTrips{}
	cfg.ConnConfig.Tracer = rt
	cfg.MaxConns = 1 // one connection: its statements are prepared once
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		testenv.Unavailable(t, "PostgreSQL", "postgres", "OUTBOX_TEST_POSTGRES_DSN", err)
	}
	e := &env{dialect: outbox.PostgreSQL, pool: pool}
	in := e.inbox(t, inbox.Config{})
	fx := e.effects(t)
	h := func(msg *message.Message) ([]*message.Message, error) {
		return nil, fx.apply(msg.Context(), msg.UUID)
	}
	// The first delivery prepares the statements.
	require.NoError(t, deliver(in, watermill.NewUUID(), h))

	rt.n.Store(0)
	uuid := watermill.NewUUID()
	require.NoError(t, deliver(in, uuid, h))
	require.EqualValues(t, 3, rt.n.Load(), "round trips of a delivery: begin and record, the handler's statement, commit")
	require.Equal(t, 1, fx.of(t, uuid))

	// A duplicate: begin and record, rollback.
	rt.n.Store(0)
	require.NoError(t, deliver(in, uuid, h))
	require.EqualValues(t, 2, rt.n.Load(), "round trips of a duplicate")
	require.Equal(t, 1, fx.of(t, uuid))
}

// A record that fails (here: no inbox table) fails the delivery before the
// handler runs, and gives the connection back: over pgx the batch that
// began the transaction must be rolled back, or the pool runs dry.
func TestFailedRecordRunsNoHandler(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		cfg := inbox.Config{Consumer: "billing", Table: testenv.TableName(t), Dialect: e.dialect}
		var in *inbox.Inbox
		var err error
		if e.pool != nil {
			in, err = inbox.NewPgx(e.pool, cfg, nil)
		} else {
			in, err = inbox.New(e.sqlDB, cfg, nil)
		}
		require.NoError(t, err) // not migrated
		var calls atomic.Int32
		h := func(*message.Message) ([]*message.Message, error) { calls.Add(1); return nil, nil }
		// More deliveries than the pools have connections: a connection
		// kept by a failed one would make a later one wait for the pool.
		for range 40 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			msg := message.NewMessage(watermill.NewUUID(), nil)
			msg.SetContext(ctx)
			_, err := in.Middleware(h)(msg)
			cancel()
			require.Error(t, err)
			require.NotErrorIs(t, err, context.DeadlineExceeded, "a delivery waited for a connection")
		}
		require.Zero(t, calls.Load())
		if e.pool != nil {
			require.Zero(t, e.pool.Stat().AcquiredConns())
		} else {
			require.Zero(t, e.sqlDB.Stats().InUse)
		}
	})
}
