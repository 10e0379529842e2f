package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// cli is the command built as a binary, run as a user would.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

// result is one run of the binary.
type result struct {
	code           int
	stdout, stderr string
}

// buildCLI builds the command into t's temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// newCLI runs bin with the test process's environment less every OUTBOX_*
// variable, plus vars.
func newCLI(t *testing.T, bin string, vars ...string) *cli {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_") {
			env = append(env, kv)
		}
	}
	return &cli{t: t, bin: bin, env: append(env, vars...)}
}

func (c *cli) run(args ...string) result {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else {
		require.NoError(c.t, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ok runs args and requires exit status 0 and nothing on stderr.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	require.Equal(c.t, 0, r.code, "%v: stderr: %s", args, r.stderr)
	require.Empty(c.t, r.stderr, "%v", args)
	return r.stdout
}

// cliDB is one database the command is tested on.
type cliDB struct {
	name    string
	dialect outbox.Dialect
	// open returns the URL to give the command and a handle for the test.
	open func(t *testing.T) (string, *sql.DB)
}

var cliDBs = []cliDB{
	{"postgres", outbox.PostgreSQL, func(t *testing.T) (string, *sql.DB) { return testenv.PostgresDSN(), testenv.Postgres(t) }},
	{"mysql", outbox.MySQL, func(t *testing.T) (string, *sql.DB) { return testenv.MySQLDSN(), testenv.MySQL(t) }},
	// The command through PgBouncer in transaction pooling mode, with the
	// plain URL; the test's own reads go to PostgreSQL directly.
	{"pgbouncer", outbox.PostgreSQL, func(t *testing.T) (string, *sql.DB) { return testenv.PgBouncerDSN(), testenv.Postgres(t) }},
	{"sqlite", outbox.SQLite, func(t *testing.T) (string, *sql.DB) {
		path := filepath.Join(t.TempDir(), "outbox.db")
		db, err := sql.Open("sqlite", "file:"+path+"?"+outbox.SQLiteConnParams)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		return "sqlite:" + path, db
	}},
}

// fixture is a table the command works on, on one database.
type fixture struct {
	t     *testing.T
	db    *sql.DB
	table string
	store *outbox.SQLStore
	cli   *cli
}

// newFixture gives a test its own table, created by the command's migrate.
func newFixture(t *testing.T, bin string, d cliDB) *fixture {
	t.Helper()
	url, db := d.open(t)
	table := testenv.TableName(t)
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table + `_relays`) })
	f := &fixture{t: t, db: db, table: table, cli: newCLI(t, bin, "OUTBOX_DATABASE_URL="+url, "OUTBOX_TABLE="+table)}
	out := f.cli.ok("migrate")
	require.Contains(t, out, "table "+table+" is up to date on ")
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table).Scan(&n), "migrate created the table")
	require.Zero(t, n)
	require.Equal(t, out, f.cli.ok("migrate"), "migrate is idempotent")
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: d.dialect, Outbox: config.Config{Table: table}}, nil)
	require.NoError(t, err)
	f.store = store
	return f
}

// insert commits n rows of topic and returns their ids, oldest first.
func (f *fixture) insert(topic, key string, n int) []int64 {
	f.t.Helper()
	pub, err := outbox.NewPublisher(f.store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(f.t, err)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("{}"))
		if key != "" {
			msgs[i].Metadata.Set(outbox.PartitionKeyMetadataKey, key)
		}
	}
	require.NoError(f.t, pub.Publish(topic, msgs...))
	return f.ids(`topic = '` + topic + `' ORDER BY id DESC LIMIT ` + strconv.Itoa(n))
}

func (f *fixture) ids(where string) []int64 {
	f.t.Helper()
	rows, err := f.db.Query(`SELECT id FROM ` + f.table + ` WHERE ` + where)
	require.NoError(f.t, err)
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		require.NoError(f.t, rows.Scan(&id))
		ids = append([]int64{id}, ids...)
	}
	require.NoError(f.t, rows.Err())
	return ids
}

// kill makes the rows of topic dead, as the relay leaves them.
func (f *fixture) kill(topic string) {
	f.t.Helper()
	_, err := f.db.Exec(`UPDATE ` + f.table + ` SET state = 'dead', attempts = 3, last_error = 'kafka: message too large', waiting = 1 WHERE topic = '` + topic + `'`)
	require.NoError(f.t, err)
}

// states returns "<topic> <state> <count>" for every group of rows.
func (f *fixture) states() []string {
	f.t.Helper()
	rows, err := f.db.Query(`SELECT topic, state, count(*) FROM ` + f.table + ` GROUP BY topic, state ORDER BY topic, state`)
	require.NoError(f.t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var topic, state string
		var n int
		require.NoError(f.t, rows.Scan(&topic, &state, &n))
		out = append(out, fmt.Sprintf("%s %s %d", topic, state, n))
	}
	require.NoError(f.t, rows.Err())
	return out
}

// TestCLI runs the built command against PostgreSQL, MariaDB and SQLite.
func TestCLI(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	for _, d := range cliDBs {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			t.Run("StatsAndDeadListShowTheTable", func(t *testing.T) {
				t.Parallel()
				testStatsAndList(t, newFixture(t, bin, d))
			})
			t.Run("RequeueByTopic", func(t *testing.T) {
				t.Parallel()
				testRequeueByTopic(t, newFixture(t, bin, d))
			})
			t.Run("PurgeByIDAndAll", func(t *testing.T) {
				t.Parallel()
				testPurge(t, newFixture(t, bin, d))
			})
			t.Run("DDL", func(t *testing.T) {
				t.Parallel()
				c := newCLI(t, bin)
				for _, table := range []string{"watermill_outbox", "app.events_outbox"} {
					want, err := outbox.DDL(d.dialect, table)
					require.NoError(t, err)
					args := []string{"ddl", "--dialect", string(d.dialect)}
					if table != config.DefaultTable {
						args = append(args, "--table", table)
					}
					require.Equal(t, want, c.ok(args...))
				}
				url, _ := d.open(t)
				require.Equal(t, mustDDL(t, d.dialect, "from_env"), newCLI(t, bin, "OUTBOX_DATABASE_URL="+url, "OUTBOX_TABLE=from_env").ok("ddl"),
					"the dialect of the database URL, the table of OUTBOX_TABLE")
			})
		})
	}
}

func mustDDL(t *testing.T, d outbox.Dialect, table string) string {
	ddl, err := outbox.DDL(d, table)
	require.NoError(t, err)
	return ddl
}

func testStatsAndList(t *testing.T, f *fixture) {
	require.Contains(t, f.cli.ok("stats"), "no undelivered or dead rows")

	f.insert("orders.placed", "k1", 4)
	f.kill("orders.placed")
	f.insert("orders.placed", "", 2) // pending
	paymentIDs := f.insert("payments", "", 3)
	f.kill("payments")

	out := f.cli.ok("stats")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	require.Equal(t, "table "+f.table, strings.SplitN(lines[0], " on ", 2)[0])
	require.Regexp(t, `^TOPIC\s+PENDING\s+WAITING\s+LEASED\s+ORPHANED\s+DEAD\s+BACKLOG\s+OLDEST UNDELIVERED\s+OLDEST LEASED\s+OLDEST DEAD$`, lines[1])
	require.Regexp(t, `^orders\.placed\s+2\s+0\s+0\s+0\s+4\s+2\s+\S+\s+-\s+\S+$`, lines[2])
	require.Regexp(t, `^payments\s+0\s+0\s+0\s+0\s+3\s+0\s+-\s+-\s+\S+$`, lines[3])

	var js statsJSON
	require.NoError(t, json.Unmarshal([]byte(f.cli.ok("stats", "--json")), &js))
	require.Equal(t, f.table, js.Table)
	require.Len(t, js.Topics, 2)
	require.Equal(t, topicStatsJSON{Topic: "orders.placed", Pending: 2, Dead: 4,
		OldestPendingSeconds: js.Topics[0].OldestPendingSeconds, OldestDeadSeconds: js.Topics[0].OldestDeadSeconds}, js.Topics[0])
	require.Positive(t, js.Topics[0].OldestDeadSeconds)
	require.Equal(t, "payments", js.Topics[1].Topic)
	require.Equal(t, 3, js.Topics[1].Dead)
	require.Zero(t, js.Topics[1].OldestPendingSeconds)

	// Every dead row, paged two at a time by following the printed cursor.
	want := f.ids(`state = 'dead' ORDER BY id DESC`)
	var got []int64
	args := []string{"dead", "list", "--limit", "2"}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10)
		out := f.cli.ok(args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Regexp(t, `^ID\s+TOPIC\s+KEY\s+ATTEMPTS\s+AGE\s+LAST ERROR$`, lines[0])
		for _, l := range lines[1 : len(lines)-1] {
			fields := strings.Fields(l)
			id, err := strconv.ParseInt(fields[0], 10, 64)
			require.NoError(t, err, l)
			got = append(got, id)
			require.Equal(t, "3", fields[3], "attempts: %s", l)
			require.True(t, strings.HasSuffix(l, "kafka: message too large"), l)
		}
		last := lines[len(lines)-1]
		if last == "(last page)" {
			break
		}
		m := regexp.MustCompile(`^next page: watermill-outbox (dead list --limit 2 --after (\d+))$`).FindStringSubmatch(last)
		require.NotNil(t, m, last)
		require.Equal(t, strconv.FormatInt(got[len(got)-1], 10), m[2], "the cursor is the last id shown")
		args = strings.Fields(m[1])
	}
	require.Equal(t, want, got)

	var page deadListJSON
	require.NoError(t, json.Unmarshal([]byte(f.cli.ok("dead", "list", "--topic", "payments", "--json")), &page))
	require.Nil(t, page.NextAfter)
	require.Len(t, page.Rows, 3)
	for i, r := range page.Rows {
		require.Equal(t, paymentIDs[i], r.ID)
		require.Equal(t, "payments", r.Topic)
		require.Equal(t, 3, r.Attempts)
		require.Equal(t, "kafka: message too large", r.LastError)
	}
	require.NoError(t, json.Unmarshal([]byte(f.cli.ok("dead", "list", "--topic", "payments", "--json", "--limit", "1")), &page))
	require.Equal(t, paymentIDs[0], *page.NextAfter)

	require.Equal(t, "no dead rows of topic \"nothing\" in table "+f.table+"\n", f.cli.ok("dead", "list", "--topic", "nothing"))
}

func testRequeueByTopic(t *testing.T, f *fixture) {
	f.insert("orders.placed", "k1", 7)
	f.kill("orders.placed")
	f.insert("orders.placed", "", 1)
	f.insert("payments", "", 2)
	f.kill("payments")
	before := f.states()
	require.Equal(t, []string{"orders.placed dead 7", "orders.placed pending 1", "payments dead 2"}, before)

	out := f.cli.ok("dead", "requeue", "--topic", "orders.placed")
	require.Contains(t, out, `would requeue 7 dead rows of topic "orders.placed" in table `+f.table+"; the first 5:\n")
	require.Contains(t, out, "nothing changed: add --yes to requeue them\n")
	require.Equal(t, 5, strings.Count(out, "orders.placed  k1"), out)
	require.Equal(t, before, f.states(), "without --yes nothing changes")

	out = f.cli.ok("dead", "requeue", "--topic", "orders.placed", "--yes")
	require.Equal(t, `requeued 7 dead rows of topic "orders.placed" in table `+f.table+"\n", out)
	require.Equal(t, []string{"orders.placed pending 8", "payments dead 2"}, f.states(), "only that topic's rows")
	var n int
	require.NoError(t, f.db.QueryRow(`SELECT count(*) FROM `+f.table+` WHERE topic = 'orders.placed' AND attempts = 0 AND waiting = 0`).Scan(&n))
	require.Equal(t, 8, n, "a fresh budget, due now")

	require.Equal(t, `no dead rows of topic "orders.placed" in table `+f.table+": nothing to requeue\n",
		f.cli.ok("dead", "requeue", "--topic", "orders.placed"))
}

func testPurge(t *testing.T, f *fixture) {
	dead := f.insert("orders.placed", "", 3)
	f.kill("orders.placed")
	live := f.insert("orders.placed", "", 1)
	f.insert("payments", "", 2)
	f.kill("payments")
	before := f.states()

	ids := fmt.Sprintf("%d,%d", dead[0], live[0])
	out := f.cli.ok("dead", "purge", "--id", ids, "--id", strconv.FormatInt(dead[2], 10))
	require.Contains(t, out, "would purge 2 dead rows among the 3 ids given in table "+f.table+":\n")
	require.Equal(t, before, f.states(), "without --yes nothing changes")

	require.Equal(t, "purged 2 dead rows among the 3 ids given in table "+f.table+"\n",
		f.cli.ok("dead", "purge", "--id", ids, "--id", strconv.FormatInt(dead[2], 10), "--yes"))
	require.Equal(t, []string{"orders.placed dead 1", "orders.placed pending 1", "payments dead 2"}, f.states())

	require.Contains(t, f.cli.ok("dead", "purge", "--all"), "would purge 3 dead rows of every topic")
	require.Equal(t, "purged 3 dead rows of every topic in table "+f.table+"\n", f.cli.ok("dead", "purge", "--all", "--yes"))
	require.Equal(t, []string{"orders.placed pending 1"}, f.states())
}

// TestCLIBadSettings: bad usage and settings exit 2 with exactly one line
// on stderr, naming the flag or variable, and never the password.
func TestCLIBadSettings(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	const pw = "Sup3r-s3cret"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unreachable PostgreSQL", []string{"OUTBOX_DATABASE_URL=postgres://app:" + pw + "@127.0.0.1:1/test"}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"},
		{"bad PostgreSQL URL", nil, []string{"dead", "list", "--database-url", "postgres://app:" + pw + "@127.0.0.1:port/test"},
			"watermill-outbox: --database-url: invalid PostgreSQL URL: invalid port"},
		{"bad MySQL DSN", []string{"OUTBOX_DATABASE_URL=app:" + pw + "@tcp(127.0.0.1:3306/test"}, []string{"migrate"},
			"watermill-outbox: OUTBOX_DATABASE_URL: invalid MySQL DSN"},
		{"unreachable MySQL", []string{"OUTBOX_DATABASE_URL=app:" + pw + "@tcp(127.0.0.1:1)/test"}, []string{"dead", "requeue", "--all"},
			"watermill-outbox: OUTBOX_DATABASE_URL: cannot connect to MySQL at 127.0.0.1:1: connection refused"},
		{"wrong MySQL password", []string{"OUTBOX_DATABASE_URL=root:" + pw + "@tcp(" + mysqlAddr() + ")/test"}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: cannot connect to MySQL at " + mysqlAddr() + ": Access denied"},
		{"unsupported URL", []string{"OUTBOX_DATABASE_URL=oracle://app:" + pw + "@db/x"}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: unsupported database (oracle://)"},
		{"unreachable PostgreSQL, keyword/value form", []string{"OUTBOX_DATABASE_URL=host=127.0.0.1 port=1 user=app password=" + pw + " dbname=test"}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"},
		{"unknown form", []string{"OUTBOX_DATABASE_URL=app " + pw}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: unsupported database URL"},
		{"unescaped # in the password", []string{"OUTBOX_DATABASE_URL=mysql://app:" + pw + "#" + pw + "@127.0.0.1:1/test"}, []string{"stats"},
			"watermill-outbox: OUTBOX_DATABASE_URL: invalid MySQL DSN"},
		{"relay with an unescaped # in the AMQP password", []string{"OUTBOX_DATABASE_URL=postgres://app@127.0.0.1:1/test", "OUTBOX_AMQP_URL=amqp://guest:" + pw + "#" + pw + "@h/"},
			[]string{"relay"}, "invalid config: URL: "},
		{"no SQLite file", nil, []string{"stats", "--database-url", "sqlite:" + filepath.Join(t.TempDir(), "none.db")},
			"watermill-outbox: --database-url: SQLite file "},
		{"no database", nil, []string{"stats"}, "watermill-outbox: no database: set --database-url or OUTBOX_DATABASE_URL"},
		{"bad setting", []string{"OUTBOX_DATABASE_URL=postgres://app:" + pw + "@127.0.0.1:1/test", "OUTBOX_BATCH_SIZE=NaN"}, []string{"stats"},
			`watermill-outbox: OUTBOX_BATCH_SIZE: invalid value "NaN"`},
		{"empty table", []string{"OUTBOX_DATABASE_URL=postgres://app:" + pw + "@127.0.0.1:1/test", "OUTBOX_TABLE="}, []string{"stats"},
			"watermill-outbox: OUTBOX_TABLE: set but empty: unset it for the default (watermill_outbox), or name the table"},
		{"two selections", nil, []string{"dead", "purge", "--all", "--topic", "x"}, "give exactly one of --id, --topic or --all"},
		{"bad id", nil, []string{"dead", "purge", "--id", "1,-2"}, `invalid value "1,-2" for flag --id`},
		{"bad topic", nil, []string{"dead", "requeue", "--topic", "a b"}, "--topic: outbox: invalid topic"},
		{"bad limit", nil, []string{"dead", "list", "--limit", "0"}, "--limit: want 1 to 10000, got 0"},
		{"unknown command", nil, []string{"drop"}, `unknown command "drop"`},
		{"unknown flag", nil, []string{"stats", "--yes"}, "flag provided but not defined: --yes"},
		{"relay without destination", []string{"OUTBOX_DATABASE_URL=postgres://app:" + pw + "@127.0.0.1:1/test"}, []string{"relay"},
			"no destination: set --kafka-brokers (OUTBOX_KAFKA_BROKERS) or --amqp-url (OUTBOX_AMQP_URL)"},
		{"relay with a bad AMQP URL", []string{"OUTBOX_DATABASE_URL=postgres://app@127.0.0.1:1/test", "OUTBOX_AMQP_URL=http://guest:" + pw + "@h/"},
			[]string{"relay"}, "--amqp-url (OUTBOX_AMQP_URL) http://guest:***@h/: invalid config: URL: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newCLI(t, bin, tc.env...).run(tc.args...)
			require.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
			require.Empty(t, r.stdout)
			require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
			require.Contains(t, r.stderr, tc.want)
			require.NotContains(t, r.stderr, pw)
		})
	}
}

func mysqlAddr() string {
	m := regexp.MustCompile(`tcp\(([^)]*)\)`).FindStringSubmatch(testenv.MySQLDSN())
	if m == nil {
		return "127.0.0.1:3306"
	}
	return m[1]
}

// TestCLIHelpShowsNoPassword: --help of every command, with a password in
// the environment's URLs, prints help and no password, and exits 0.
func TestCLIHelpShowsNoPassword(t *testing.T) {
	t.Parallel()
	const pw = "Sup3r-s3cret"
	c := newCLI(t, buildCLI(t), "OUTBOX_DATABASE_URL=postgres://app:"+pw+"@127.0.0.1:1/test", "OUTBOX_AMQP_URL=amqp://app:"+pw+"@h/")
	for _, args := range [][]string{{"--help"}, {"help"}, {"dead", "--help"}, {"migrate", "--help"}, {"ddl", "-h"}, {"stats", "--help"},
		{"dead", "list", "--help"}, {"dead", "requeue", "--help"}, {"dead", "purge", "--help"}, {"relay", "--help"}} {
		out := c.ok(args...)
		require.Contains(t, out, "Usage:", "%v", args)
		require.NotContains(t, out, pw, "%v", args)
	}
	r := c.run()
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "Commands:")
}

// TestCLIRelay: the relay subcommand relays, over database/sql or a pgx
// pool, serves /healthz and the outbox's /metrics, logs no password, and
// exits 0 on SIGTERM.
func TestCLIRelay(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{"database/sql", "pgx"} {
		t.Run(strings.ReplaceAll(driver, "/", "_"), func(t *testing.T) {
			t.Parallel()
			testCLIRelay(t, driver)
		})
	}
}

func testCLIRelay(t *testing.T, driver string) {
	url := testenv.AMQPURL(t)
	bin := buildCLI(t)
	f := newFixture(t, bin, cliDBs[0])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "relay", "--metrics-addr", "127.0.0.1:0", "--amqp-url", url, "--driver", driver)
	cmd.Env = append(f.cli.env, "OUTBOX_ADMIN=true")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var log strings.Builder
	lines := bufio.NewScanner(stderr)
	// waitLog reads the log up to the first line holding s.
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
	waitLog("relay: running")

	resp, err := http.Get("http://" + addr[1] + "/healthz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	resp, err = http.Get("http://" + addr[1] + "/metrics")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Contains(t, string(body), "go_goroutines ")
	require.True(t, strings.Contains(string(body), "outbox_stats_last_refresh_timestamp_seconds "), "the outbox's metrics are served")
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err = http.Get("http://" + addr[1] + "/readyz")
		require.NoError(t, err)
		body, _ = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK || time.Now().After(deadline) {
			break
		}
		<-time.After(50 * time.Millisecond) // polling the endpoint, not timing it
	}
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Equal(t, "ready\n", string(body))
	resp, err = http.Get("http://" + addr[1] + "/admin/")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Contains(t, string(body), "Read-only.", "OUTBOX_ADMIN=true serves the page, without writes")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitLog("relay: stopped")
	_, _ = io.Copy(io.Discard, stderr)
	require.NoError(t, cmd.Wait(), "exit 0 on SIGTERM")
	if u, err := neturl.Parse(url); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && len(pw) >= 3 {
			require.NotContains(t, log.String(), pw, "the AMQP URL's password is not logged")
		}
	}
}

// TestCLIMigrateReservedWordTableOnSQLite: migrate --table order works on
// SQLite (every statement quotes the name), and so does stats on it.
func TestCLIMigrateReservedWordTableOnSQLite(t *testing.T) {
	t.Parallel()
	bin := buildCLI(t)
	url := "sqlite:" + filepath.Join(t.TempDir(), "outbox.db")
	c := newCLI(t, bin)
	require.Contains(t, c.ok("migrate", "--table", "order", "--database-url", url), "table order is up to date on ")
	require.Contains(t, c.ok("stats", "--table", "order", "--database-url", url), "no undelivered or dead rows")
}

// TestCLIRelayThroughPgBouncer: the relay runs through PgBouncer with the
// plain URL. Without --listen-database-url its LISTEN cannot receive: one
// warning names the pooler and the setting, /healthz says so after "ok",
// and outbox_listen_receiving is 0. With it, the LISTEN receives (1).
func TestCLIRelayThroughPgBouncer(t *testing.T) {
	t.Parallel()
	amqp := testenv.AMQPURL(t)
	bin := buildCLI(t)
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("listen_direct=%v", direct), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, bin, cliDBs[2]) // pgbouncer
			args := []string{"relay", "--metrics-addr", "127.0.0.1:0", "--amqp-url", amqp}
			if direct {
				args = append(args, "--listen-database-url", testenv.PostgresDSN())
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = f.cli.env
			stderr, err := cmd.StderrPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			lines := bufio.NewScanner(stderr)
			var log strings.Builder
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
			get := func(path string) (int, string) {
				t.Helper()
				resp, err := http.Get("http://" + addr[1] + path)
				require.NoError(t, err)
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(body)
			}
			// waitGauge polls /metrics, on a ticker, for the LISTEN's gauge.
			waitGauge := func(want string) {
				t.Helper()
				deadline := time.After(60 * time.Second)
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for {
					if _, body := get("/metrics"); strings.Contains(body, "\noutbox_listen_receiving "+want+"\n") {
						return
					}
					select {
					case <-deadline:
						t.Fatalf("outbox_listen_receiving never became %s", want)
					case <-tick.C:
					}
				}
			}
			waitLog("relay: running")
			if direct {
				waitGauge("1")
				code, body := get("/healthz")
				require.Equal(t, http.StatusOK, code, body)
				require.Equal(t, "ok\n", body)
			} else {
				line := waitLog("LISTEN receives no notifications")
				require.Contains(t, line, "transaction pooler")
				require.Contains(t, line, "OUTBOX_LISTEN_DATABASE_URL")
				waitGauge("0")
				code, body := get("/healthz")
				require.Equal(t, http.StatusOK, code, body)
				require.Contains(t, body, "ok\nlisten: receives no commit notifications")
			}
			f.insert("orders", "", 3)
			waitFor := time.After(60 * time.Second)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for len(f.ids("true")) > 0 {
				select {
				case <-waitFor:
					t.Fatal("the relay did not deliver through the pooler")
				case <-tick.C:
				}
			}
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			waitLog("relay: stopped")
			_, _ = io.Copy(io.Discard, stderr)
			require.NoError(t, cmd.Wait(), "exit 0 on SIGTERM")
			require.NotContains(t, log.String(), "dialect does not match")
			require.NotContains(t, log.String(), "42P05")
		})
	}
}
