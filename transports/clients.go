package transports

import (
	"hash/maphash"
	"sync"

	"github.com/olahol/melody"
)

// clients finds the client of a melody session. melody would carry it in a
// per-session Keys map, a map on every idle connection; a sharded index
// costs an entry (docs/performance.md). Sharded because melody calls
// back, per message, from every connection's goroutines.
type clients struct {
	seed   maphash.Seed
	shards [64]struct {
		mu sync.RWMutex
		m  map[*melody.Session]*wsClient
	}
}

func newClients() *clients {
	x := &clients{seed: maphash.MakeSeed()}
	for i := range x.shards {
		x.shards[i].m = make(map[*melody.Session]*wsClient)
	}
	return x
}

func (x *clients) shard(s *melody.Session) int {
	return int(maphash.Comparable(x.seed, s) % uint64(len(x.shards)))
}

func (x *clients) get(s *melody.Session) *wsClient {
	sh := &x.shards[x.shard(s)]
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.m[s]
}

func (x *clients) put(s *melody.Session, c *wsClient) {
	sh := &x.shards[x.shard(s)]
	sh.mu.Lock()
	sh.m[s] = c
	sh.mu.Unlock()
}

func (x *clients) remove(s *melody.Session) {
	sh := &x.shards[x.shard(s)]
	sh.mu.Lock()
	delete(sh.m, s)
	sh.mu.Unlock()
}

// all lists every client.
func (x *clients) all() []*wsClient {
	var out []*wsClient
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.RLock()
		for _, c := range sh.m {
			out = append(out, c)
		}
		sh.mu.RUnlock()
	}
	return out
}

func (x *clients) len() int {
	n := 0
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
