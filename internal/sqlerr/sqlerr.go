// Package sqlerr reads database drivers' errors without linking the
// drivers.
package sqlerr

import "reflect"

// MySQLNumber is the server's error number of a go-sql-driver/mysql
// *MySQLError in err's chain, or 0. The driver's error type has no method
// to ask through an interface (as pgx's and SQLite's have), and naming the
// type would link the MySQL driver into every program that reads errors
// so, PostgreSQL-only ones included: so its Number field is read by
// reflection, from the type the driver names MySQLError.
func MySQLNumber(err error) uint16 {
	for _, e := range chain(err) {
		v := reflect.ValueOf(e)
		if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
			continue
		}
		if t := v.Elem().Type(); t.Name() != "MySQLError" || t.PkgPath() != "github.com/go-sql-driver/mysql" {
			continue
		}
		if n := v.Elem().FieldByName("Number"); n.IsValid() && n.Kind() == reflect.Uint16 {
			return uint16(n.Uint())
		}
	}
	return 0
}

// chain lists err and every error it wraps, depth first, following both
// Unwrap() error and Unwrap() []error as errors.As does.
func chain(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e)
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}
