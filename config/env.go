package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// DefaultEnvPrefix is the prefix of the variables FromEnv reads.
const DefaultEnvPrefix = "OUTBOX_"

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
	return FromEnvMap(prefix, env.ToMap(os.Environ()))
}

// FromEnvMap is FromEnvWithPrefix reading environ instead of the process
// environment, for tests. A nil environ is empty.
func FromEnvMap(prefix string, environ map[string]string) (Config, error) {
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
		FuncMap:     map[reflect.Type]env.ParserFunc{reflect.TypeFor[time.Duration](): parseSeconds},
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

// UnknownVariables lists, sorted, the variables of environ that start with
// prefix but name no setting of Config, nor one of known (full names, such
// as a command's own variables): most likely misspelt ("OUTBOX_BATCHSIZE"),
// and otherwise silently ignored. Each comes with the setting it probably
// meant, when one differs from it only in underscores or case.
func UnknownVariables(prefix string, environ map[string]string, known ...string) []string {
	squash := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "_", "")) }
	names := map[string]bool{}
	for _, k := range known {
		names[k] = true
	}
	for _, v := range fieldVars {
		names[prefix+v] = true
	}
	var out []string
	for k := range environ {
		if !strings.HasPrefix(k, prefix) || names[k] {
			continue
		}
		hint := ""
		for n := range names {
			if squash(n) == squash(k) {
				hint = " (did you mean " + n + "?)"
			}
		}
		out = append(out, k+hint)
	}
	slices.Sort(out)
	return out
}

// fieldVars maps Config's field names to their variables, without prefix.
var fieldVars = func() map[string]string {
	t := reflect.TypeFor[Config]()
	m := make(map[string]string, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		m[f.Name] = key
	}
	return m
}()

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

// decimalSeconds matches a plain non-negative decimal: "300", "1.5", ".25".
// Exponents, hex, NaN and Inf are left out on purpose.
var decimalSeconds = regexp.MustCompile(`^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$`)

// parseSeconds parses a *_SECONDS variable: a decimal number of seconds, as
// the variable name says, or a Go duration for readability ("1500ms").
func parseSeconds(s string) (any, error) {
	if strings.HasPrefix(s, "-") {
		return nil, errors.New("must not be negative")
	}
	if decimalSeconds.MatchString(s) {
		// time.ParseDuration converts the fraction exactly and catches
		// overflow, which float arithmetic would not.
		d, err := time.ParseDuration(s + "s")
		if err != nil {
			return nil, errors.New("out of range")
		}
		return d, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, errors.New("want seconds (e.g. 1.5) or a Go duration (e.g. 1500ms)")
	}
	if d < 0 {
		return nil, errors.New("must not be negative")
	}
	return d, nil
}
