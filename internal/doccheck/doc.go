// Package doccheck holds only tests: they keep the links between README.md
// and the pages under docs/ pointing at files and headings that exist, the
// README a front page, and forwarder/doc.go's file map complete.
package doccheck
