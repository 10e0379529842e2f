package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cpuTicks is the CPU time (user + system, in clock ticks) of the
// processes a drain loads, by group: PostgreSQL's backends, the broker
// (a JVM or Erlang) and this bench process. Linux only; empty elsewhere.
type cpuTicks map[int]procTicks

type procTicks struct {
	group string
	ticks int64
}

func cpuSnapshot() cpuTicks {
	out := cpuTicks{}
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < 0 {
			continue
		}
		comm := s[lp+1 : rp]
		var group string
		switch {
		case pid == self:
			group = "bench"
		case comm == "postgres":
			group = "postgres"
		case comm == "java" || comm == "beam.smp":
			group = "broker"
		default:
			continue
		}
		f := strings.Fields(s[rp+2:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[pid] = procTicks{group, u + st}
	}
	return out
}

// cpuPerEvent says how much CPU each group used between before and now,
// in microseconds per event (100 ticks a second).
func cpuPerEvent(before cpuTicks, events int) string {
	after := cpuSnapshot()
	used := map[string]int64{}
	var total int64
	for pid, a := range after {
		d := a.ticks - before[pid].ticks
		used[a.group] += d
		total += d
	}
	us := func(t int64) float64 { return float64(t) * 1e4 / float64(events) }
	return fmt.Sprintf("cpu %.0fus/event (postgres %.0f, broker %.0f, bench %.0f)", us(total), us(used["postgres"]), us(used["broker"]), us(used["bench"]))
}
