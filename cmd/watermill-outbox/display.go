package main

import (
	"strconv"
	"unicode/utf8"
)

// display renders a value read from the table (a topic, a partition key,
// an error) for the text output: as it is when every character is
// printable, Go-quoted otherwise, so a newline, a tab, a terminal escape or
// an invalid byte shows as \n, \t, \x1b or \xff and can neither forge a row
// of the output nor reach the operator's terminal. --json escapes them
// already.
func display(s string) string {
	for i, r := range s {
		if !strconv.IsPrint(r) || (r == utf8.RuneError && isInvalidAt(s, i)) || (r == '"' && i == 0) {
			return strconv.Quote(s)
		}
	}
	return s
}

// isInvalidAt reports whether s holds an invalid byte at i (and not a
// literal U+FFFD).
func isInvalidAt(s string, i int) bool {
	_, size := utf8.DecodeRuneInString(s[i:])
	return size == 1
}
