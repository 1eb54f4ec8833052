package e2e

// Bounded waits: every wait of the tests ends after a timeout, and no test
// sleeps in place of waiting for what it expects.

import (
	"testing"
	"time"
)

// waitTimeout bounds every single wait of the harness. The server runs under
// the race detector, several at once: keep this generous.
const waitTimeout = 10 * time.Second

// eventually polls cond every 20 ms until it holds, for at most d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receive returns the next item a reader goroutine queued on msgs, or
// ok=false when done is closed (ended is then true) or nothing came within
// d. An item already queued, or queued before the end, comes first.
func receive[T any](msgs <-chan T, done <-chan struct{}, d time.Duration) (m T, ok, ended bool) {
	select {
	case m := <-msgs:
		return m, true, false
	default:
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case m := <-msgs:
		return m, true, false
	case <-done:
		select { // an item may have been queued right before the end
		case m := <-msgs:
			return m, true, false
		default:
		}
		return m, false, true
	case <-timer.C:
		return m, false, false
	}
}
