package client

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	base, ceiling := 100*time.Millisecond, time.Second
	for attempt, limit := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		limit *= time.Millisecond
		var top time.Duration
		for range 500 {
			d := backoff(attempt, base, ceiling)
			if d < 0 || d >= limit {
				t.Fatalf("attempt %d: %v outside [0, %v)", attempt, d, limit)
			}
			top = max(top, d)
		}
		if top < limit/2 {
			t.Errorf("attempt %d: largest of 500 delays %v: not jittered up to %v", attempt, top, limit)
		}
	}
	if d := backoff(1000, base, ceiling); d >= ceiling {
		t.Errorf("attempt 1000: %v", d)
	}
}
