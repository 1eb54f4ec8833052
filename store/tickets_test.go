package store_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/saga-family/sagapush/store"
	"github.com/saga-family/sagapush/store/pgtest"
)

// ticketStore is session.TicketStore, which this package cannot import.
type ticketStore interface {
	PutTicket(ctx context.Context, hash, claims []byte, ttl time.Duration, notAfter time.Time) (time.Time, error)
	TakeTicket(ctx context.Context, hash []byte) ([]byte, bool, error)
}

func newHash(t testing.TB) []byte {
	t.Helper()
	h := make([]byte, 32)
	rand.Read(h)
	return h
}

// sameJSON compares JSON by value (jsonb does not keep the bytes).
func sameJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("claims %q: %v", got, err)
	}
	json.Unmarshal([]byte(want), &w)
	if fmt.Sprint(g) != fmt.Sprint(w) {
		t.Errorf("claims %s, want %s", got, want)
	}
}

// testTicketStore is what both stores promise: a ticket is taken once,
// within its TTL or the bound, and never after.
func testTicketStore(t *testing.T, s ticketStore) {
	ctx := ctxT(t)
	const claims = `{"userId":"u1","name":"Ann","projects":["p1"],"expiresAt":1700000000000}`

	h := newHash(t)
	before := time.Now()
	exp, err := s.PutTicket(ctx, h, []byte(claims), 30*time.Second, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// Postgres's clock is the judge there: allow it some skew.
	if d := exp.Sub(before); d < 25*time.Second || d > 35*time.Second {
		t.Errorf("expires %v after the put, want about 30s", d)
	}
	got, ok, err := s.TakeTicket(ctx, h)
	if err != nil || !ok {
		t.Fatalf("take: %v, %v", ok, err)
	}
	sameJSON(t, got, claims)
	if _, ok, err := s.TakeTicket(ctx, h); err != nil || ok {
		t.Errorf("second take: %v, %v; want nothing", ok, err)
	}
	if _, ok, err := s.TakeTicket(ctx, newHash(t)); err != nil || ok {
		t.Errorf("unknown hash: %v, %v; want nothing", ok, err)
	}

	// notAfter bounds the TTL.
	bound := time.Now().Add(10 * time.Second).Truncate(time.Millisecond)
	h = newHash(t)
	if exp, err := s.PutTicket(ctx, h, []byte(claims), time.Hour, bound); err != nil || !exp.Equal(bound) {
		t.Errorf("bounded put: expires %v (%v), want %v", exp, err, bound)
	}
	if _, ok, err := s.TakeTicket(ctx, h); err != nil || !ok {
		t.Errorf("bounded ticket: %v, %v", ok, err)
	}

	// Expired ones are not taken: a bound in the past, and a zero TTL.
	for _, put := range []struct {
		ttl      time.Duration
		notAfter time.Time
	}{{time.Hour, time.Now().Add(-time.Second)}, {0, time.Time{}}} {
		h := newHash(t)
		if _, err := s.PutTicket(ctx, h, []byte(claims), put.ttl, put.notAfter); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := s.TakeTicket(ctx, h); err != nil || ok {
			t.Errorf("expired ticket (ttl %v, bound %v) taken: %v, %v", put.ttl, put.notAfter, ok, err)
		}
	}
}

func TestTicketsMemory(t *testing.T) {
	t.Parallel()
	testTicketStore(t, store.NewMemory(10))
}

// The embedded store holds a bounded number of tickets; expired ones make
// room again.
func TestTicketsMemoryBounded(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	m := store.NewMemory(10)
	m.SetTicketLimit(3)
	soon := time.Now().Add(100 * time.Millisecond)
	var hashes [][]byte
	for range 3 {
		h := newHash(t)
		hashes = append(hashes, h)
		if _, err := m.PutTicket(ctx, h, []byte(`{}`), time.Hour, soon); err != nil {
			t.Fatal(err)
		}
	}
	// A taken ticket keeps its place until it expires.
	if _, ok, _ := m.TakeTicket(ctx, hashes[0]); !ok {
		t.Fatal("take failed")
	}
	if _, err := m.PutTicket(ctx, newHash(t), []byte(`{}`), time.Hour, time.Time{}); !errors.Is(err, store.ErrTooManyTickets) {
		t.Fatalf("fourth ticket: %v, want ErrTooManyTickets", err)
	}
	time.Sleep(time.Until(soon)) // expiry is the event; there is nothing else to wait on
	h := newHash(t)
	if _, err := m.PutTicket(ctx, h, []byte(`{}`), time.Hour, time.Time{}); err != nil {
		t.Fatalf("after the others expired: %v", err)
	}
	if _, ok, _ := m.TakeTicket(ctx, h); !ok {
		t.Error("the new ticket was not kept")
	}
}

func TestTicketsPostgres(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	testTicketStore(t, openStore(t, dbURL, store.PostgresOptions{}))
}

// Two instances redeem the same tickets at the same moment: each ticket
// opens exactly one connection.
func TestTicketsPostgresConcurrentTake(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	a := openStore(t, dbURL, store.PostgresOptions{})
	b := openStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)
	const n = 50
	for i := range n {
		h := newHash(t)
		if _, err := a.PutTicket(ctx, h, []byte(`{"userId":"u1"}`), time.Minute, time.Time{}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		start := make(chan struct{})
		for _, s := range []*store.Postgres{a, b, a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, ok, err := s.TakeTicket(ctx, h)
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					wins++
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins != 1 {
			t.Fatalf("ticket %d taken %d times, want exactly once", i, wins)
		}
	}
}

// Expired rows are deleted: by the prune, and on the way out of a put at
// most once a minute.
func TestTicketsPostgresPruned(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	p := openStore(t, dbURL, store.PostgresOptions{PruneInterval: -1})
	ctx := ctxT(t)
	count := func() (n int) {
		t.Helper()
		if err := db.GetContext(ctx, &n, `SELECT count(*) FROM push_tickets`); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The first put of an instance prunes (nothing yet); the second, a
	// ticket born expired, does not.
	if _, err := p.PutTicket(ctx, newHash(t), []byte(`{}`), time.Hour, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.PutTicket(ctx, newHash(t), []byte(`{}`), 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d rows, want 2 (the next prune is a minute away)", n)
	}
	if _, err := p.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("%d rows after the prune, want the live ticket alone", n)
	}
	// A second instance's first put prunes.
	mustExec(t, db, `UPDATE push_tickets SET expires_at = now() - interval '1 second'`)
	q := openStore(t, dbURL, store.PostgresOptions{PruneInterval: -1})
	if _, err := q.PutTicket(ctx, newHash(t), []byte(`{}`), time.Hour, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("%d rows after a put on a fresh instance, want its own ticket alone", n)
	}
	// Only 32-byte hashes are keys.
	if _, err := p.PutTicket(ctx, []byte("a ticket in plain text"), []byte(`{}`), time.Hour, time.Time{}); err == nil {
		t.Error("a non-hash key was stored")
	}
}
