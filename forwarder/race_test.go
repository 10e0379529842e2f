//go:build race

package forwarder_test

// raceEnabled: the race detector slows modernc.org/sqlite (C translated to
// Go) some 25-fold, so SQLite load tests scale down under it.
const raceEnabled = true
