package config_test

import (
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// envVars lists Config's variables by kind, read from the struct so a new
// field is covered here without editing this file.
func envVars(t *testing.T) (durations, ints, bools, strs []string) {
	t.Helper()
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name := "OUTBOX_" + strings.Split(f.Tag.Get("env"), ",")[0]
		switch {
		case f.Type == reflect.TypeFor[time.Duration]():
			durations = append(durations, name)
		case f.Type.Kind() == reflect.Int:
			ints = append(ints, name)
		case f.Type.Kind() == reflect.Bool:
			bools = append(bools, name)
		case f.Type.Kind() == reflect.String:
			strs = append(strs, name)
		default:
			t.Fatalf("field %s: no bad values for type %s", f.Name, f.Type)
		}
	}
	return durations, ints, bools, strs
}

// TestFromEnvMap_garbageInEveryVariable: NaN, infinities, exponents, hex,
// negatives, stray spaces and plain garbage in every variable are each an
// error naming the variable and quoting the value, and no Config comes back.
func TestFromEnvMap_garbageInEveryVariable(t *testing.T) {
	t.Parallel()
	durations, ints, bools, strs := envVars(t)
	bad := map[string][]string{}
	for _, v := range durations {
		bad[v] = []string{"NaN", "nan", "-NaN", "Inf", "+Inf", "-Inf", "infinity", "1e3", "1E-3", "0x10", "garbage",
			"1s2x", "1.2.3", "1,5", "--1", "-1", "-0.5", "-1ms", " 1", "1 ", "1ss", "١", "99999999999", "9223372036854775807ns1"}
	}
	for _, v := range ints {
		bad[v] = []string{"NaN", "Inf", "-Inf", "1.5", "1e3", "0x10", "abc", " 1", "1 ", "--1", "-1", "+-1",
			"9223372036854775808", "-9223372036854775809", "١"}
	}
	for _, v := range bools {
		bad[v] = []string{"NaN", "yes", "no", "on", "off", "2", "-1", "truee", " true"}
	}
	for _, v := range strs {
		bad[v] = []string{"x; DROP TABLE y", `x"y`, "x'y", "x`y", "a b", " x", "a.b.c", "1x", "x-y", "x--", strings.Repeat("a", 49)}
	}
	c, err := config.FromEnvMap("OUTBOX_", map[string]string{"OUTBOX_TABLE": strings.Repeat("a", 49)})
	require.ErrorContains(t, err, "at most 48 characters per part", "the message states the limit ValidTableName applies")
	require.Equal(t, config.Config{}, c)
	for variable, values := range bad {
		for _, value := range values {
			c, err := config.FromEnvMap("OUTBOX_", map[string]string{variable: value})
			require.ErrorContains(t, err, variable+": invalid value "+strconv.Quote(value), "%s=%q", variable, value)
			require.Equal(t, config.Config{}, c, "%s=%q", variable, value)
		}
	}
}

// TestValidate_extremeValuesInEveryField: in code, the most negative value
// of every numeric field, and the largest where a maximum exists, are
// reported by field name. (A NaN cannot reach a Config from code: its
// fields are integers and time.Duration; the environment's NaN is covered
// above.)
func TestValidate_extremeValuesInEveryField(t *testing.T) {
	t.Parallel()
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type.Kind() != reflect.Int64 && f.Type.Kind() != reflect.Int {
			continue
		}
		for _, v := range []int64{math.MinInt64, -1} {
			c := config.Default()
			reflect.ValueOf(&c).Elem().Field(i).SetInt(v)
			require.ErrorContains(t, c.Validate(), f.Name+":", "%s = %d", f.Name, v)
		}
	}
	c := config.Default()
	c.BatchSize = math.MaxInt
	require.ErrorContains(t, c.Validate(), "BatchSize:")
	c = config.Default()
	c.RetryBackoffMin = math.MaxInt64
	require.ErrorContains(t, c.Validate(), "RetryBackoffMin:")
}
