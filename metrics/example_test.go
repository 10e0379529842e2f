package metrics_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	_ "modernc.org/sqlite"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/metrics"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// The metrics of one outbox: registered on the application's own registry,
// fed by the forwarder (Config.Observer), served by the application's own
// HTTP server. Here the table holds two undelivered events, as a scrape
// shows them.
func ExampleNew() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "outbox-metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?"+watermilloutbox.SQLiteConnParams)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{
		Dialect: watermilloutbox.SQLite, Outbox: config.Default(),
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	// The metrics: the store gives the table's figures, the forwarder the
	// relay's.
	m, err := metrics.New(store, metrics.Config{Namespace: "shop"}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(m)
	destination := gochannel.NewGoChannel(gochannel.Config{}, nil) // Kafka or RabbitMQ: package sink
	fwd, err := forwarder.NewForwarder(store, destination, forwarder.Config{Observer: m}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer fwd.Close() // go fwd.Run(ctx) would relay the events

	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{AutoCommit: true}, nil)
	if err != nil {
		log.Fatal(err)
	}
	for i := range 2 {
		msg := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, i)))
		if err := pub.Publish("orders.placed", msg); err != nil {
			log.Fatal(err)
		}
	}

	// In the application: http.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{})).
	scrape := httptest.NewRecorder()
	promhttp.HandlerFor(registry, promhttp.HandlerOpts{}).ServeHTTP(scrape, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	lines := bufio.NewScanner(scrape.Body)
	for lines.Scan() {
		for _, gauge := range []string{"pending", "waiting", "leased", "dead"} {
			if strings.HasPrefix(lines.Text(), "shop_outbox_"+gauge+"{") {
				fmt.Println(lines.Text())
			}
		}
	}
	// Output:
	// shop_outbox_dead{topic="orders.placed"} 0
	// shop_outbox_leased{topic="orders.placed"} 0
	// shop_outbox_pending{topic="orders.placed"} 2
	// shop_outbox_waiting{topic="orders.placed"} 0
}
