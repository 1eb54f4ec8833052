package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/saga-family/sagapush/auth"
)

// localAddr spreads client sockets over 127.0.0.2-127.0.0.250 so that no
// generator runs out of ephemeral ports.
func localAddr(i int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%249))}
}

// token returns a user token that may join the given rooms.
func (s *server) token(user string, rooms ...string) string {
	t, err := auth.Mint([]byte(s.secret), auth.Claims{UserID: user, Projects: rooms}, 2*time.Hour)
	if err != nil {
		panic(err)
	}
	return t
}

// idleMemory measures the server's RSS cost of n idle connections of one
// transport, each a member of one of 100 rooms, each user in one room.
func idleMemory(ctx context.Context, b *bench, transport string, n int) error {
	s, err := startServer(ctx, b.bin)
	if err != nil {
		return err
	}
	defer s.stop()
	// Warm up: the first connections pay for pools and maps that do not
	// grow per connection.
	var warm fleet
	if _, err := warm.spawn(ctx, s, transport, 100, 0, 100); err != nil {
		warm.stop()
		return err
	}
	warm.all("close")
	warm.stop()
	s.saveProfile("heap?gc=1", "heap-warm-"+transport+".pprof")
	time.Sleep(time.Second)
	before, err := s.rss()
	if err != nil {
		return err
	}
	gBefore, _ := s.metric("go_goroutines")
	var f fleet
	defer f.stop()
	reps, err := f.spawn(ctx, s, transport, n, 0, 100)
	if err != nil {
		return err
	}
	opened := sum(reps).OpenMs
	// Two collections, as an idle server gets from the runtime's forced GC
	// every 2 minutes: what the connect burst left behind is freed, and
	// goroutine stacks grown by handshakes shrink only during a GC.
	time.Sleep(2 * time.Second)
	s.saveProfile("heap?gc=1", "heap-gc1-"+transport+".pprof")
	s.saveProfile("heap?gc=1", "heap-"+transport+".pprof")
	time.Sleep(2 * time.Second)
	after, err := s.rss()
	if err != nil {
		return err
	}
	gAfter, _ := s.metric("go_goroutines")
	heap, _ := s.metric("go_memstats_heap_inuse_bytes")
	stack, _ := s.metric("go_memstats_stack_inuse_bytes")
	scen := "idle-" + transport
	b.add(scen, "connections", float64(n), "conns", fmt.Sprintf("opened in %.1fs, 100 rooms", float64(opened)/1000))
	b.add(scen, "RSS per connection", float64(after-before)/float64(n)/1024, "KiB", fmt.Sprintf("RSS %.1f MiB -> %.1f MiB", float64(before)/(1<<20), float64(after)/(1<<20)))
	b.add(scen, "goroutines per connection", (gAfter-gBefore)/float64(n), "goroutines", "")
	b.add(scen, "heap in use per connection", heap/float64(n)/1024, "KiB", "whole heap / connections")
	b.add(scen, "stacks per connection", stack/float64(n)/1024, "KiB", "all goroutine stacks / connections")
	return nil
}
