// Package nilcheck holds the one test for a missing argument: a nil
// interface, or one holding a nil pointer, map, slice, func or channel (a
// typed nil, such as a nil *SQLStore passed as a relaystore.Store, is not
// == nil).
package nilcheck

import "reflect"

// IsNil reports a nil interface, or one holding a nil pointer, map, slice,
// func, channel or interface.
func IsNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
