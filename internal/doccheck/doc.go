// Package doccheck holds only tests: they keep the links between README.md
// and the pages under docs/ pointing at files and headings that exist.
package doccheck
