//go:build !linux

package main

import (
	"errors"
	"net"
	"time"
)

// The WebSocket load generator reads with epoll (wsepoll.go), so it runs on
// Linux only; elsewhere the bench builds and says so when asked for it.
// These are the names worker.go uses; make lint builds them for macOS and
// Windows.

var errNeedsLinux = errors.New("the WebSocket load generator needs Linux (epoll)")

const defaultPollInterval = 1 * time.Millisecond // as on Linux; unused here

type wsPoller struct {
	onMessage func(tag int, msg []byte) bool
}

type wsConn struct{}

func (*wsConn) Close() error { return nil }

func newWSPoller(time.Duration, func(msg []byte, last *int64, now time.Time), func(code int)) (*wsPoller, error) {
	return nil, errNeedsLinux
}

func (*wsPoller) dial(string, string, *net.TCPAddr, []byte, int, time.Duration) (*wsConn, error) {
	return nil, errNeedsLinux
}
