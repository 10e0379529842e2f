package watermilloutbox

import (
	"fmt"
	"strings"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

// table is one outbox table's SQL: its validated names and its dialect.
// Every statement the store runs is built from it, the parts that differ
// between databases by its dialect (d).
type table struct {
	d      sqlDialect
	name   string // as given, validated
	quoted string // quoted, possibly schema-qualified
	base   string // unqualified part, for index names
	schema string // schema part or ""
}

func newTable(d Dialect, name string) (table, error) {
	if err := d.Validate(); err != nil {
		return table{}, err
	}
	if !sqlident.ValidTable(name) {
		return table{}, fmt.Errorf("%w: %q: want letters, digits and underscores, not starting with a digit, at most 48 characters, optionally schema-qualified",
			ErrInvalidTableName, name)
	}
	sd := d.sql()
	t := table{d: sd, name: name, quoted: sd.quoteIdent(name), base: name}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		t.schema, t.base = name[:i], name[i+1:]
	}
	return t, nil
}

// p is the bind marker of the n-th (1-based) argument.
func (t table) p(n int) string { return t.d.placeholder(n) }

// index returns the quoted name of one of the table's indexes.
func (t table) index(suffix string) string { return t.d.index(t, suffix) }

// now is the database clock, in the form the dialect compares times with.
func (t table) now() string { return t.d.now() }

// plus returns the SQL for "now + the duration bound at placeholder n",
// in microseconds; minus for "now - …".
func (t table) plus(n int) string  { return t.d.shifted("+", t.p(n)) }
func (t table) minus(n int) string { return t.d.shifted("-", t.p(n)) }

// epochMicros is a time expression in microseconds since the Unix epoch;
// nowMicros the database clock so.
func (t table) epochMicros(expr string) string { return t.d.epochMicros(expr) }
func (t table) nowMicros() string              { return t.d.epochMicros(t.d.now()) }

// idList binds ids starting at placeholder n and returns the SQL condition.
func (t table) idList(n int, ids []int64) (string, []any) { return t.d.idList(n, ids) }

// rowColumns lists what SQLStore.readRows scans, each column prefixed
// with alias ("t." or "").
func (t table) rowColumns(alias string) string {
	a := alias
	return a + "id, " + a + "uuid, " + a + "topic, " + a + "partition_key, " + a + "payload, " + a + "metadata, " +
		t.epochMicros(alias+"created_at") + ", " + a + "attempts"
}
