package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/e0a82c8c/watermill-outbox/internal/envvar"
)

// FromEnv returns the Config described by the OUTBOX_* environment variables
// (see the package documentation), with defaults for the unset ones. The
// error reports every bad variable at once, by name and value.
func FromEnv() (Config, error) {
	return FromEnvWithPrefix(DefaultEnvPrefix)
}

// FromEnvWithPrefix is FromEnv with another prefix, used verbatim: pass
// "ORDERS_OUTBOX_" to read ORDERS_OUTBOX_BATCH_SIZE and so on. It lets one
// process run several outboxes.
func FromEnvWithPrefix(prefix string) (Config, error) {
	return fromEnvMap(prefix, env.ToMap(os.Environ()))
}

// fromEnvMap is FromEnvWithPrefix reading environ instead of the process
// environment. A nil environ is empty.
func fromEnvMap(prefix string, environ map[string]string) (Config, error) {
	if environ == nil {
		// caarlos0/env reads the process environment when given nil.
		environ = map[string]string{}
	}

	// Start from the defaults instead of calling SetDefaults after parsing:
	// that would turn an explicit 0 into the default instead of reporting it.
	c := Default()
	raw := make(map[string]string) // variable -> value, for set variables
	err := env.ParseWithOptions(&c, env.Options{
		Environment: environ,
		Prefix:      prefix,
		FuncMap:     map[reflect.Type]env.ParserFunc{reflect.TypeFor[time.Duration](): func(s string) (any, error) { return envvar.Seconds(s) }},
		OnSet: func(key string, value any, _ bool) {
			if s, _ := value.(string); s != "" {
				raw[key] = s
			}
		},
	})

	name := func(field string) string { return prefix + fieldVars[field] }
	var errs []error
	if err != nil {
		errs = append(errs, parseErrors(err, name, raw)...)
	}
	// An empty table variable most likely lost its value on the way (an
	// unset shell variable, a templating slip); taken as the default it
	// would create and use watermill_outbox, maybe in a shared database.
	if v, ok := environ[name("Table")]; ok && v == "" {
		errs = append(errs, fmt.Errorf("%s: set but empty: unset it for the default (%s), or name the table", name("Table"), DefaultTable))
	}
	// Validate even after a parse error, so one run reports every bad
	// variable; a field that failed to parse still holds its valid default.
	for _, fe := range c.validate() {
		errs = append(errs, fe.envError(name, raw))
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("config: %w", errors.Join(errs...))
	}
	return c, nil
}

// fieldVars maps Config's field names to their variables, without prefix.
var fieldVars = envvar.Names(reflect.TypeFor[Config]())

// envError renders e by variable name, and with the variable's value as
// written when it was set.
func (e *fieldError) envError(name func(field string) string, raw map[string]string) error {
	key := name(e.field)
	if v, ok := raw[key]; ok {
		if secretFields[e.field] {
			v = redactURL(v)
		}
		return fmt.Errorf("%s: invalid value %q: %s", key, v, e.ruleText(name))
	}
	// Not set, so the default; another variable made it invalid.
	return errors.New(e.format(name))
}

// parseErrors rewrites caarlos0/env's errors, which name the Go field and
// not the variable, to name the variable and its value.
func parseErrors(err error, name func(field string) string, raw map[string]string) []error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return []error{err}
	}
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if !errors.As(e, &pe) {
			out = append(out, e)
			continue
		}
		key := name(pe.Name)
		out = append(out, fmt.Errorf("%s: invalid value %q: %w", key, raw[key], parseCause(pe.Err)))
	}
	return out
}

// parseCause replaces strconv's errors, which repeat the value and say
// "invalid syntax", with what the variable wants.
func parseCause(err error) error {
	var ne *strconv.NumError
	if !errors.As(err, &ne) {
		return err
	}
	switch {
	case errors.Is(ne.Err, strconv.ErrRange):
		return errors.New("out of range")
	case ne.Func == "ParseBool":
		return errors.New("want true or false")
	default:
		return errors.New("want an integer")
	}
}
