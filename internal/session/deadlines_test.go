package session

import (
	"testing"
	"time"
)

// Deadlines fire in order, a moved deadline fires once at its new time, and
// removed or fired clients leave nothing behind (an entry would pin the
// whole connection).
func TestDeadlines(t *testing.T) {
	var d deadlines
	mk := func() *Session { return &Session{deadlineIdx: -1, ended: true} }
	a, b, c := mk(), mk(), mk()
	now := time.Now()
	d.set(a, now.Add(time.Hour))
	d.set(b, now.Add(time.Hour))
	d.set(c, now.Add(time.Hour))
	d.remove(b)
	if n := d.len(); n != 2 {
		t.Fatalf("%d deadlines after a removal, want 2", n)
	}
	// Watch the firing through the heap itself: move a and c to now.
	d.set(a, now.Add(20*time.Millisecond))
	d.set(c, now.Add(10*time.Millisecond))
	d.set(c, now.Add(30*time.Millisecond)) // moved: c fires once, last
	deadline := time.After(5 * time.Second)
	for d.len() > 0 {
		select {
		case <-deadline:
			t.Fatalf("%d deadlines never fired", d.len())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if a.deadlineIdx != -1 || b.deadlineIdx != -1 || c.deadlineIdx != -1 {
		t.Fatalf("indexes left: %d %d %d", a.deadlineIdx, b.deadlineIdx, c.deadlineIdx)
	}
	for i := 0; i < 1000; i++ { // many clients set and removed: nothing stays
		x := mk()
		d.set(x, now.Add(time.Hour))
		d.set(x, now.Add(2*time.Hour))
		d.remove(x)
	}
	if n := d.len(); n != 0 {
		t.Fatalf("%d deadlines left after removing every client", n)
	}
}
