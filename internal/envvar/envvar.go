// Package envvar holds the rules of the outbox's environment variables that
// package config and the command both apply: a settings struct's variable
// names, the variables that name none, and the *_SECONDS values.
package envvar

import (
	"errors"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Names maps the fields of struct type t to their variables (the name in
// the field's env tag), without prefix.
func Names(t reflect.Type) map[string]string {
	m := make(map[string]string, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		m[f.Name] = key
	}
	return m
}

// Unknown lists, sorted, the variables of environ that start with prefix
// but name no field of settings (a struct type read with Names), nor one of
// known (full names, such as a command's own variables): most likely
// misspelt ("OUTBOX_BATCHSIZE"), and otherwise silently ignored. Each comes
// with the variable it probably meant, when one differs from it only in
// underscores or case.
func Unknown(prefix string, environ map[string]string, settings reflect.Type, known ...string) []string {
	squash := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "_", "")) }
	names := map[string]bool{}
	for _, k := range known {
		names[k] = true
	}
	for _, v := range Names(settings) {
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

// decimalSeconds matches a plain non-negative decimal: "300", "1.5", ".25".
// Exponents, hex, NaN and Inf are left out on purpose.
var decimalSeconds = regexp.MustCompile(`^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$`)

// Seconds parses a *_SECONDS variable: a decimal number of seconds, as
// the variable name says, or a Go duration for readability ("1500ms").
func Seconds(s string) (time.Duration, error) {
	if strings.HasPrefix(s, "-") {
		return 0, errors.New("must not be negative")
	}
	if decimalSeconds.MatchString(s) {
		// time.ParseDuration converts the fraction exactly and catches
		// overflow, which float arithmetic would not.
		d, err := time.ParseDuration(s + "s")
		if err != nil {
			return 0, errors.New("out of range")
		}
		return d, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("want seconds (e.g. 1.5) or a Go duration (e.g. 1500ms)")
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}
