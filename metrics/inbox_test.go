package metrics_test

import (
	"context"
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/metrics"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func TestInboxMetrics(t *testing.T) {
	db := testenv.SQLite(t)
	cfg := inbox.Config{Consumer: "ledger", Dialect: outbox.SQLite}
	source, err := inbox.New(db, cfg, nil)
	require.NoError(t, err)
	m, err := metrics.NewInbox(source, metrics.Config{Namespace: "shop"}, nil)
	require.NoError(t, err)
	cfg.Observer = m
	in, err := inbox.New(db, cfg, nil)
	require.NoError(t, err)
	require.NoError(t, in.Migrate(context.Background()))
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))

	ok := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	fail := func(*message.Message) ([]*message.Message, error) { return nil, errors.New("boom") }
	for _, d := range []struct {
		uuid string
		h    message.HandlerFunc
	}{{"m1", ok}, {"m1", ok}, {"m1", ok}, {"m2", fail}, {"m2", ok}} {
		_, _ = in.Middleware(d.h)(message.NewMessage(d.uuid, nil))
	}

	// value returns the sample of family name whose labels are values.
	value := func(name string, values ...string) float64 {
		families, err := reg.Gather()
		require.NoError(t, err)
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
		samples:
			for _, s := range f.GetMetric() {
				for i, l := range s.GetLabel() {
					if l.GetValue() != values[i] {
						continue samples
					}
				}
				if s.GetCounter() != nil {
					return s.GetCounter().GetValue()
				}
				return s.GetGauge().GetValue()
			}
		}
		t.Fatalf("no %s%v", name, values)
		return 0
	}
	require.EqualValues(t, 2, value("shop_inbox_deliveries_total", "ledger", "handled"))
	require.EqualValues(t, 2, value("shop_inbox_deliveries_total", "ledger", "duplicate"))
	require.EqualValues(t, 1, value("shop_inbox_deliveries_total", "ledger", "failed"))
	require.EqualValues(t, 2, value("shop_inbox_records", "ledger"))

	_, err = metrics.NewInbox(nil, metrics.Config{ConstLabels: prometheus.Labels{"consumer": "x"}}, nil)
	require.Error(t, err)
}
