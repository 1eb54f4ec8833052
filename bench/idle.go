package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"sagapush/auth"
)

const benchRooms = 100

// localAddr spreads client sockets over 127.0.0.2-127.0.0.250 so that one
// generator never runs out of ephemeral ports.
func localAddr(i int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%249))}
}

func roomIDs() []string {
	ids := make([]string, benchRooms)
	for i := range ids {
		ids[i] = fmt.Sprintf("room-%d", i)
	}
	return ids
}

// token returns a user token that may join the given rooms.
func (s *server) token(user string, rooms ...string) string {
	t, err := auth.Mint([]byte(s.secret), auth.Claims{UserID: user, Projects: rooms}, time.Hour)
	if err != nil {
		panic(err)
	}
	return t
}

// idleConn is one open client connection held by the generator.
type idleConn interface{ Close() error }

// dialWS opens a WebSocket, joins room and keeps reading (answering pings).
func dialWS(ctx context.Context, addr, token, room string, i int) (idleConn, error) {
	d := websocket.Dialer{
		NetDialContext:   (&net.Dialer{LocalAddr: localAddr(i)}).DialContext,
		ReadBufferSize:   512,
		WriteBufferSize:  512,
		HandshakeTimeout: 20 * time.Second,
	}
	c, _, err := d.DialContext(ctx, "ws://"+addr+"/ws?token="+token, nil)
	if err != nil {
		return nil, err
	}
	c.WriteMessage(websocket.TextMessage, []byte(`{"event":"join_project","data":{"projectId":"`+room+`"},"ack":1}`))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, msg, err := c.ReadMessage()
	if err != nil || !strings.Contains(string(msg), "joined_project") {
		c.Close()
		return nil, fmt.Errorf("join: %v %s", err, msg)
	}
	c.SetReadDeadline(time.Time{})
	go func() {
		for {
			if _, _, err := c.NextReader(); err != nil {
				return
			}
		}
	}()
	return c, nil
}

// dialSSE opens a stream on room and keeps reading it.
func dialSSE(ctx context.Context, addr, token, room string, i int) (idleConn, error) {
	d := net.Dialer{LocalAddr: localAddr(i), Timeout: 20 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "GET /sse?projects=%s&token=%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", room, token, addr)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("sse: %v %v", err, resp)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if strings.HasPrefix(line, "event: joined_project") {
			break
		}
	}
	c.SetReadDeadline(time.Time{})
	go io.Copy(io.Discard, br)
	return c, nil
}

// openMany opens n connections with dial, 100 at a time.
func openMany(ctx context.Context, n int, dial func(i int) (idleConn, error)) ([]idleConn, error) {
	conns := make([]idleConn, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 100; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dial(i)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

func closeAll(conns []idleConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// idleMemory measures the server's RSS cost of n idle connections, each a
// member of one of 100 rooms.
func idleMemory(ctx context.Context, bin string, rep *report, transport string, n int) error {
	s, err := startServer(ctx, bin)
	if err != nil {
		return err
	}
	defer s.stop()
	// Connection i is user i%1000 in room i%100: each user has one room,
	// as a storyteller usually does.
	rooms := roomIDs()
	tokens := make([]string, 1000)
	for i := range tokens {
		tokens[i] = s.token(fmt.Sprintf("user-%d", i), rooms[i%len(rooms)])
	}
	dial := func(i int) (idleConn, error) {
		if transport == "sse" {
			return dialSSE(ctx, s.addr, tokens[i%len(tokens)], rooms[i%len(rooms)], i)
		}
		return dialWS(ctx, s.addr, tokens[i%len(tokens)], rooms[i%len(rooms)], i)
	}
	// Warm up: the first connections pay for pools and maps that do not grow
	// per connection.
	warm, err := openMany(ctx, 100, dial)
	closeAll(warm)
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	before, err := s.rss()
	if err != nil {
		return err
	}
	gBefore, _ := s.metric("go_goroutines")
	start := time.Now()
	conns, err := openMany(ctx, n, dial)
	defer closeAll(conns)
	if err != nil {
		return err
	}
	opened := time.Since(start)
	time.Sleep(3 * time.Second) // let the connect burst's garbage be collected
	// Two collections, as an idle server gets from the runtime's forced GC
	// every 2 minutes: what the connect burst left behind is freed, and
	// goroutine stacks grown by handshakes shrink only during a GC.
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
	per := float64(after-before) / float64(n) / 1024
	rep.Results = append(rep.Results,
		result{scen, "connections", float64(n), "conns", fmt.Sprintf("opened in %.1fs, %d rooms", opened.Seconds(), benchRooms)},
		result{scen, "rss per connection", per, "KiB", fmt.Sprintf("RSS %.1f MiB -> %.1f MiB", float64(before)/(1<<20), float64(after)/(1<<20))},
		result{scen, "goroutines per connection", (gAfter - gBefore) / float64(n), "goroutines", ""},
		result{scen, "heap in use per connection", heap / float64(n) / 1024, "KiB", "whole heap / connections"},
		result{scen, "stacks per connection", stack / float64(n) / 1024, "KiB", "all goroutine stacks / connections"},
	)
	fmt.Fprintf(os.Stderr, "bench: %s: %d connections, %.2f KiB RSS each\n", scen, n, per)
	return nil
}
