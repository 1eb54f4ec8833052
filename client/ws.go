package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"strconv"
	"sync"

	"github.com/coder/websocket"
)

// Close codes of docs/protocol.md section 4 that change what the client does.
const (
	closeOriginRefused = 1008
	closeUnauthorized  = 4401
)

// wsConn is one WebSocket connection and its reader.
type wsConn struct {
	c      *Client
	conn   *websocket.Conn
	cancel context.CancelFunc // ends the reader
	done   chan struct{}      // closed when the reader returned
	err    error              // why the reader returned (set before done closes)

	mu      sync.Mutex
	ack     int64
	pending map[string]chan *wire
}

// wsURL is the /ws URL with a one-time ticket in the query.
func (c *Client) wsURL(ticket string) string {
	u := *c.base
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	u.Path = u.Path + "/ws"
	u.RawPath = ""
	u.RawQuery = ""
	u.RawQuery = "ticket=" + url.QueryEscape(ticket)
	return u.String()
}

// dialWS gets a ticket, opens a WebSocket with it and waits for the answer
// to a first ping, all within FallbackTimeout.
func (c *Client) dialWS(ctx context.Context) (*wsConn, failure, bool) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.FallbackTimeout)
	defer cancel()
	ticket, f, ok := c.ticket(dctx)
	if !ok {
		return nil, f, false
	}
	conn, resp, err := websocket.Dial(dctx, c.wsURL(ticket), &websocket.DialOptions{HTTPClient: c.http})
	if err != nil {
		if resp != nil && resp.StatusCode != 101 {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
				resp.Body.Close()
			}
			f, _ := httpFailure(resp.StatusCode, body, "WebSocket handshake refused")
			return nil, f, false
		}
		return nil, failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "WebSocket could not connect: " + err.Error()}}, false
	}
	conn.SetReadLimit(c.opts.MaxMessageSize)
	// The reader's context is not the client's: close() ends it after the
	// close handshake, which needs the reader.
	rctx, rcancel := context.WithCancel(context.Background())
	ws := &wsConn{c: c, conn: conn, cancel: rcancel, done: make(chan struct{}), pending: make(map[string]chan *wire)}
	c.mu.Lock()
	c.cur = ws
	c.mu.Unlock()
	go ws.read(rctx)

	if _, err := ws.request(dctx, "ping", nil); err != nil {
		f := failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "WebSocket did not answer a ping: " + err.Error()}}
		if errors.Is(err, errConnClosed) {
			f = ws.closeFailure()
		}
		c.teardown()
		ws.close()
		return nil, f, false
	}
	return ws, failure{}, true
}

// keepWS runs a connected WebSocket until it is lost or the client closes.
func (c *Client) keepWS(ctx context.Context, ws *wsConn) failure {
	c.mu.Lock()
	c.ws = ws
	c.cursor = "" // events now come by WebSocket: an SSE cursor is stale
	ids := c.projectIDsLocked()
	c.mu.Unlock()
	c.connected(WebSocket)
	for _, id := range ids {
		c.mu.Lock()
		p := c.projects[id]
		c.mu.Unlock()
		if p != nil {
			go c.sendJoin(ws, id, p)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	refresh := c.newRefresher(ctx)
	defer refresh.stop()
	for {
		select {
		case <-ctx.Done():
			c.teardown()
			ws.close()
			return failure{err: ErrClosed}
		case <-ws.done:
			f := ws.closeFailure()
			c.teardown()
			ws.close()
			return f
		case <-refresh.fire:
			refresh.start()
		case tok := <-refresh.done:
			if !refresh.got(tok) {
				continue
			}
			go func() {
				rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
				defer cancel()
				if _, err := ws.request(rctx, "auth", map[string]string{"token": tok}); err != nil && !errors.Is(err, errConnClosed) && ctx.Err() == nil {
					c.log.Warn("saga push: token refresh refused", "err", err)
				}
			}()
		}
	}
}

// read reads messages until the connection ends.
func (ws *wsConn) read(ctx context.Context) {
	defer close(ws.done)
	for {
		typ, b, err := ws.conn.Read(ctx)
		if err != nil {
			ws.err = err
			return
		}
		if typ == websocket.MessageText {
			ws.c.handle(b, ws, "")
		}
	}
}

// closeFailure describes why the reader ended (call after done closed).
func (ws *wsConn) closeFailure() failure {
	var ce websocket.CloseError
	if !errors.As(ws.err, &ce) {
		msg := "WebSocket closed"
		if ws.err != nil {
			msg += ": " + ws.err.Error()
		}
		return failure{err: &Error{Code: "CONNECTION_CLOSED", Message: msg}}
	}
	e := &Error{Code: "CONNECTION_CLOSED", Message: "WebSocket closed (" + strconv.Itoa(int(ce.Code)) + ")", CloseCode: int(ce.Code)}
	if ce.Reason != "" {
		e.Message += ": " + ce.Reason
	}
	switch ce.Code {
	case closeOriginRefused:
		e.Code = "ORIGIN_NOT_ALLOWED"
		return failure{err: e, fatal: true}
	case closeUnauthorized:
		e.Code = "UNAUTHORIZED"
		return failure{err: e, auth: true}
	}
	return failure{err: e}
}

// close closes the connection and waits for the reader.
func (ws *wsConn) close() {
	select {
	case <-ws.done:
		ws.conn.CloseNow()
	default:
		ws.conn.Close(websocket.StatusNormalClosure, "")
	}
	ws.cancel()
	<-ws.done
}

// request sends {event, data, ack} and waits for the answer with that ack.
// An error answer is returned as *Error.
func (ws *wsConn) request(ctx context.Context, event string, data any) (*wire, error) {
	ws.mu.Lock()
	ws.ack++
	key := strconv.FormatInt(ws.ack, 10)
	ch := make(chan *wire, 1)
	ws.pending[key] = ch
	ws.mu.Unlock()
	defer func() {
		ws.mu.Lock()
		delete(ws.pending, key)
		ws.mu.Unlock()
	}()
	msg := struct {
		Event string          `json:"event"`
		Data  any             `json:"data,omitempty"`
		Ack   json.RawMessage `json:"ack"`
	}{event, data, json.RawMessage(key)}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if err := ws.write(b); err != nil {
		return nil, err
	}
	select {
	case m := <-ch:
		if m.Event == "error" {
			e := &Error{Code: "INTERNAL_ERROR", Message: "request failed"}
			json.Unmarshal(m.Data, e)
			return m, e
		}
		return m, nil
	case <-ws.done:
		return nil, errConnClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send sends a frame that gets no answer.
func (ws *wsConn) send(ctx context.Context, event string, data any) error {
	b, err := json.Marshal(map[string]any{"event": event, "data": data})
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return ws.write(b)
}

// write writes one text frame. The caller's context is not used: canceling
// a write closes a coder/websocket connection.
func (ws *wsConn) write(b []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), ws.c.opts.RequestTimeout)
	defer cancel()
	if err := ws.conn.Write(ctx, websocket.MessageText, b); err != nil {
		return errConnClosed
	}
	return nil
}

// answer hands a message with an ack to the request waiting for it and
// reports whether one was.
func (ws *wsConn) answer(key string, m *wire) bool {
	ws.mu.Lock()
	ch, ok := ws.pending[key]
	if ok {
		delete(ws.pending, key)
	}
	ws.mu.Unlock()
	if ok {
		ch <- m
	}
	return ok
}
