package defaults_test

import (
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/defaults"
)

type conf struct {
	N      int
	D      time.Duration
	S      []string
	Off    int // negative: off
	F      func() int
	hidden int
}

func TestFill(t *testing.T) {
	def := conf{N: 5, D: time.Second, S: []string{"a"}, Off: 10, F: func() int { return 1 }, hidden: 7}
	c := conf{N: 2, Off: -1}
	defaults.Fill(&c, def)
	if c.N != 2 || c.D != time.Second || len(c.S) != 1 || c.Off != -1 || c.F == nil || c.hidden != 0 {
		t.Fatalf("filled %+v: set fields kept (negative included), zero ones from the defaults, unexported untouched", c)
	}
}
