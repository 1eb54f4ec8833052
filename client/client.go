// Package client is the Go client of Saga push: reconnect, resume and both
// transports, with the semantics of the browser client.
//
// It follows web/client.js (PROTOCOL.md section 10) choice for choice:
//
//   - Transports are tried in the order of [Options.Transports] (default
//     WebSocket, then SSE). A WebSocket counts as working once it answers a
//     first ping within [Options.FallbackTimeout]; otherwise the next
//     transport is tried. After a WebSocket failure, reconnects go straight
//     to the transport that worked last, and try the WebSocket again after
//     five minutes.
//   - Every project joined is remembered with the last seq seen. After every
//     reconnect, and on every transport change, the client rejoins with that
//     seq (WebSocket: join_project with since; SSE: since=P1:17,P2:4, or
//     lastEventId=<cursor> when the stream's project list did not change), so
//     each domain event is delivered once, in order. A domain event whose seq
//     is not above the last one seen for its project is dropped, and so is a
//     domain event of a project that is not joined.
//   - When the server answers recovered:false, the project continues from the
//     seq of that answer and a [Resync] is sent on [Client.Resyncs]: reload
//     that project's state from the API.
//   - Reconnects wait a random delay in [0, min(MaxReconnectDelay,
//     ReconnectDelay*2^attempt)) (exponential backoff with full jitter). After
//     server_shutdown the client waits reconnectAfterMs plus up to as much
//     again, so that clients do not return together.
//   - A refused token (HTTP 401, close 4401, TOKEN_EXPIRED) makes the client
//     call [Options.GetToken] again and reconnect. Without GetToken it stops
//     (see [Client.Err]) with TOKEN_EXPIRED once the token has expired, and
//     with UNAUTHORIZED when a handshake is refused with HTTP 401; a close
//     with 4401 of a token still valid is retried. GetToken is also called on every
//     (re)connect, and again min(30 s, 10% of the token's lifetime) before
//     the token expires (WebSocket: an auth frame; SSE: the stream re-opens
//     from its cursor).
//   - SSE: the joined projects are part of the stream URL, so joining or
//     leaving re-opens the stream. With no project joined there is no stream:
//     the client counts as connected once /api/websocket/health answers.
//     Over SSE, [Client.Ping] measures a GET of /api/websocket/health. The
//     retry: field of the stream is parsed and ignored: reconnects follow the
//     backoff above.
//
// Usage:
//
//	c, err := client.New(client.Options{URL: "https://push.example.com", GetToken: fetchToken})
//	if err != nil { ... }
//	defer c.Close()
//	if err := c.Connect(ctx); err != nil { ... }
//	if _, err := c.Join(ctx, projectID); err != nil { ... }
//	for ev := range c.Events() {
//		// ev.Name, ev.ProjectID, ev.Seq, ev.Data ...
//	}
//
// Domain events, typing events, user-targeted events and unsolicited server
// messages (left_project with reason access_revoked, an error that answers no
// request, server_shutdown) arrive on [Client.Events], or are handed to
// [Options.OnEvent]. Answers to the client's own requests (joined_project,
// left_project for a leave, pong, authenticated) are not delivered there: they
// are the results of [Client.Join], [Client.Leave] and [Client.Ping].
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Transport names, for [Options.Transports] and [Client.Transport].
const (
	WebSocket = "websocket"
	SSE       = "sse"
)

// State is the connection state.
type State string

// Connection states, as in the browser client.
const (
	StateDisconnected State = "disconnected" // not started, stopped after a fatal error, or closed
	StateConnecting   State = "connecting"   // the first attempt after Connect
	StateConnected    State = "connected"
	StateReconnecting State = "reconnecting" // waiting for, or making, the next attempt
)

// wsRetryAfter: after a WebSocket failure, reconnects use the transport that
// worked last for this long, then try the WebSocket again.
const wsRetryAfter = 5 * time.Minute

// Options configure a [Client]. Only URL and one of Token or GetToken are
// required.
type Options struct {
	// URL is the http(s) base URL of the server, e.g. https://push.example.com.
	URL string
	// Token is a static JWT. Ignored when GetToken is set.
	Token string
	// GetToken returns a fresh JWT. It is called before every (re)connect,
	// after the server refuses the token, and shortly before the token
	// expires.
	GetToken func(ctx context.Context) (string, error)
	// Transports are tried in this order (default: WebSocket, SSE).
	Transports []string
	// ReconnectDelay is the first backoff ceiling (default 1 s).
	ReconnectDelay time.Duration
	// MaxReconnectDelay caps the backoff (default 30 s).
	MaxReconnectDelay time.Duration
	// ReconnectAttempts is how many consecutive failed attempts are made
	// before the client stops with [ErrGaveUp]; 0 means no limit.
	ReconnectAttempts int
	// RequestTimeout bounds a join, leave, ping or token refresh, and the
	// opening of an event stream (default 10 s).
	RequestTimeout time.Duration
	// FallbackTimeout is how long a WebSocket has to open and answer a first
	// ping before the next transport is tried (default 4 s).
	FallbackTimeout time.Duration
	// EventBuffer is the capacity of the Events channel (default 1024). When
	// it is full, the client stops reading the connection until there is
	// room: nothing is dropped (a server may then close the connection with
	// 4001, and the client resumes from its last seq).
	EventBuffer int
	// OnEvent, when set, receives every event instead of the Events channel
	// (which then stays empty). It is called on the goroutine that reads the
	// connection, one event at a time, in order: it must not block for long
	// and must not call Close. This is the cheapest way to consume events.
	OnEvent func(Event)
	// OnStateChange, when set, is called after every state change. It must
	// not block.
	OnStateChange func(State)
	// HTTPClient is used for the WebSocket handshake, the event stream and
	// the health check. Its Timeout must be 0 (streams are long-lived).
	// Default: a client over http.DefaultTransport.
	HTTPClient *http.Client
	// Logger receives connection events (default: discarded).
	Logger *slog.Logger
	// MaxMessageSize is the largest server message accepted (default 16 MiB).
	MaxMessageSize int64
}

// Event is one message from the server: a domain event (Seq > 0) or another
// message delivered to the application (typing, user-targeted events, ...).
type Event struct {
	Name      string          // the message's "event"
	ProjectID string          // "" for a user-targeted event
	Seq       int64           // the project's seq for a domain event, else 0
	TS        int64           // server time in ms since the epoch (0 when absent)
	Data      json.RawMessage // the message's "data"
	Raw       []byte          // the whole message as received
}

// Time returns TS as a time.Time (the zero Time when TS is 0).
func (e Event) Time() time.Time {
	if e.TS == 0 {
		return time.Time{}
	}
	return time.UnixMilli(e.TS)
}

// JoinResult is the data of joined_project.
type JoinResult struct {
	ProjectID string `json:"projectId"`
	Role      string `json:"role"`
	// Seq is the project's latest event seq at the join.
	Seq int64 `json:"seq"`
	// Recovered is set when the join resumed from a known seq.
	Recovered *bool `json:"recovered,omitempty"`
}

// Resync tells that the events of a project after the last seq seen could not
// be replayed (joined_project with recovered:false). Reload the project's
// state from the API; the events that follow have a seq above Seq.
type Resync struct {
	ProjectID string
	Seq       int64
}

// Error is an error sent by the server ({"code","message",...}, PROTOCOL
// section 6), or one of the client's own codes: TOKEN_EXPIRED,
// ORIGIN_NOT_ALLOWED, UNAUTHORIZED, TRANSPORT_FAILED, CONNECTION_CLOSED,
// LEFT_PROJECT, NOT_IN_PROJECT.
type Error struct {
	Code         string `json:"code"`
	Message      string `json:"message"`
	ProjectID    string `json:"projectId,omitempty"`
	RetryAfterMs int64  `json:"retryAfterMs,omitempty"`
	// Status is the HTTP status of a refused handshake, CloseCode the
	// WebSocket close code of a closed connection (0 when not applicable).
	Status    int `json:"-"`
	CloseCode int `json:"-"`
}

func (e *Error) Error() string {
	s := e.Code + ": " + e.Message
	if e.ProjectID != "" {
		s += " (project " + e.ProjectID + ")"
	}
	return s
}

var (
	// ErrClosed is returned once Close was called.
	ErrClosed = errors.New("client: closed")
	// ErrNotConnected is returned by Ping while the client is not connected.
	ErrNotConnected = errors.New("client: not connected")
	// ErrLeft is returned by a Join that Leave cancelled.
	ErrLeft = errors.New("client: project left while joining")
	// ErrGaveUp is returned by Connect (and Join) after ReconnectAttempts
	// consecutive failures; it wraps the last failure.
	ErrGaveUp = errors.New("client: gave up reconnecting")

	// errConnClosed: a request's connection closed before the answer.
	errConnClosed = errors.New("client: connection closed")
)

// Client is a Saga push client. Its methods may be called from any
// goroutine.
type Client struct {
	opts    Options
	base    *url.URL
	http    *http.Client
	log     *slog.Logger
	events  chan Event
	resyncs *resyncQueue

	closeCtx  context.Context // done once Close is called
	closeFn   context.CancelFunc
	closeOnce sync.Once

	// readMu serialises the handling of incoming messages across readers
	// (an SSE stream that is replaced, a WebSocket being torn down), so that
	// accepting an event and delivering it happen together, in order.
	readMu sync.Mutex

	mu          sync.Mutex
	state       State
	transport   string
	token       string
	projects    map[string]*project
	running     bool          // the connection loop runs
	loopDone    chan struct{} // closed when that loop returns
	connWaiters []chan error
	cur         any         // the reader whose messages count: *wsConn or *sseStream
	ws          *wsConn     // set while connected by WebSocket
	sse         *sseSession // set while connected by SSE
	cursor      string      // the last SSE id seen
	cursorKey   string      // the project list of the stream that sent it
	preferred   string
	wsFailedAt  time.Time
	shutdownIn  time.Duration // > 0: the next reconnect waits this long (server_shutdown)
	stopErr     error         // why the loop stopped (fatal error or give-up)
	closed      bool
}

// project is one project the application wants joined.
type project struct {
	lastSeq int64
	hasSeq  bool
	joined  bool // joined on the current connection
	info    JoinResult
	waiters []chan joinReply
}

type joinReply struct {
	res JoinResult
	err error
}

// New returns a client; call Connect to connect it.
func New(opts Options) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(opts.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: URL must be an http(s) base URL, not %q", opts.URL)
	}
	if opts.Token == "" && opts.GetToken == nil {
		return nil, errors.New("client: Token or GetToken is required")
	}
	if len(opts.Transports) == 0 {
		opts.Transports = []string{WebSocket, SSE}
	}
	for _, t := range opts.Transports {
		if t != WebSocket && t != SSE {
			return nil, fmt.Errorf("client: unknown transport %q (websocket, sse)", t)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.ReconnectDelay, time.Second)
	def(&opts.MaxReconnectDelay, 30*time.Second)
	def(&opts.RequestTimeout, 10*time.Second)
	def(&opts.FallbackTimeout, 4*time.Second)
	if opts.EventBuffer <= 0 {
		opts.EventBuffer = 1024
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 16 << 20
	}
	c := &Client{
		opts:     opts,
		base:     u,
		http:     opts.HTTPClient,
		log:      opts.Logger,
		state:    StateDisconnected,
		token:    opts.Token,
		projects: make(map[string]*project),
	}
	if c.http == nil {
		c.http = &http.Client{Transport: http.DefaultTransport}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if opts.OnEvent == nil {
		c.events = make(chan Event, opts.EventBuffer)
	}
	c.closeCtx, c.closeFn = context.WithCancel(context.Background())
	c.resyncs = newResyncQueue(c.closeCtx)
	return c, nil
}

// Events returns the channel of events (see the package documentation). It is
// closed by Close. It is nil when Options.OnEvent is set.
func (c *Client) Events() <-chan Event { return c.events }

// Resyncs returns the channel of resync notifications. It never blocks the
// client: while nobody reads it, it keeps the latest notification of each
// project. It is closed by Close.
func (c *Client) Resyncs() <-chan Resync { return c.resyncs.out }

// State returns the connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Transport returns the transport in use ("websocket" or "sse"), or "" while
// not connected.
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transport
}

// Err returns why the client stopped reconnecting: a fatal refusal (an
// *Error such as TOKEN_EXPIRED, UNAUTHORIZED or ORIGIN_NOT_ALLOWED) or
// ErrGaveUp. It is nil while the client connects or is connected, and after
// Close.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopErr
}

// LastSeq returns the last seq seen for a joined project (ok is false when the
// project is not joined or no seq is known yet).
func (c *Client) LastSeq(projectID string) (seq int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.projects[projectID]; p != nil && p.hasSeq {
		return p.lastSeq, true
	}
	return 0, false
}

// Projects returns the projects joined or being joined, sorted.
func (c *Client) Projects() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.projectIDsLocked()
}

func (c *Client) projectIDsLocked() []string {
	ids := make([]string, 0, len(c.projects))
	for id := range c.projects {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Connect starts connecting (transports in order) and waits until the client
// is connected. ctx bounds only the wait: while it is not connected, the
// client keeps trying in the background until Close. Connect returns an error
// when ctx ends first, on a fatal refusal (an origin not allowed, a static
// token that is refused or expired), after ReconnectAttempts failures
// (ErrGaveUp), or once Close is called. Connect may be called again after a
// fatal error.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.state == StateConnected {
		c.mu.Unlock()
		return nil
	}
	ch := make(chan error, 1)
	c.connWaiters = append(c.connWaiters, ch)
	start := !c.running
	var done chan struct{}
	if start {
		c.running = true
		c.stopErr = nil
		done = make(chan struct{})
		c.loopDone = done
	}
	c.mu.Unlock()
	if start {
		c.setState(StateConnecting)
		go c.run(done)
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		c.mu.Lock()
		c.connWaiters = slices.DeleteFunc(c.connWaiters, func(w chan error) bool { return w == ch })
		c.mu.Unlock()
		return ctx.Err()
	}
}

// Close stops the client: it closes the connection, ends every pending call
// with ErrClosed and closes the Events and Resyncs channels. It waits for
// the client's goroutines to end.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		done := c.loopDone
		running := c.running
		c.mu.Unlock()
		c.closeFn()
		if running {
			<-done
		}
		c.mu.Lock()
		for _, p := range c.projects {
			p.settle(JoinResult{}, ErrClosed)
		}
		c.settleConnectLocked(ErrClosed)
		c.mu.Unlock()
		c.setState(StateDisconnected)
		c.resyncs.close()
		if c.events != nil {
			close(c.events)
		}
	})
	return nil
}

// Join joins a project and returns the joined_project data. It may be called
// before Connect or while reconnecting: the join is sent once connected.
// ctx (and RequestTimeout) bound the wait; when it ends before the server
// answered, the join is given up. A refusal is an *Error such as
// PROJECT_ACCESS_DENIED. Joining a joined project returns its last answer.
func (c *Client) Join(ctx context.Context, projectID string) (JoinResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	ch := make(chan joinReply, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return JoinResult{}, ErrClosed
	}
	p := c.projects[projectID]
	if p != nil && p.joined && c.state == StateConnected {
		res := p.info
		c.mu.Unlock()
		return res, nil
	}
	isNew := p == nil
	if isNew {
		p = &project{}
		c.projects[projectID] = p
	}
	p.waiters = append(p.waiters, ch)
	ws, sse := c.ws, c.sse
	c.mu.Unlock()
	if isNew {
		if ws != nil {
			go c.sendJoin(ws, projectID, p)
		} else if sse != nil {
			sse.reopen()
		}
	}
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
	}
	// Give the join up, unless it was answered meanwhile.
	c.mu.Lock()
	select {
	case r := <-ch:
		c.mu.Unlock()
		return r.res, r.err
	default:
	}
	p.waiters = slices.DeleteFunc(p.waiters, func(w chan joinReply) bool { return w == ch })
	giveUp := !p.joined && len(p.waiters) == 0 && c.projects[projectID] == p
	if giveUp {
		delete(c.projects, projectID)
	}
	ws, sse = c.ws, c.sse
	c.mu.Unlock()
	if giveUp {
		if ws != nil { // tell the server, in case it joined after all
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), c.opts.RequestTimeout)
				defer cancel()
				ws.request(ctx, "leave_project", map[string]string{"projectId": projectID})
			}()
		} else if sse != nil {
			sse.reopen()
		}
	}
	return JoinResult{}, ctx.Err()
}

// Leave leaves a project. A Join of it still waiting returns ErrLeft. Over
// WebSocket it waits for the server's answer (bounded by ctx and
// RequestTimeout); a connection lost meanwhile takes the membership with it
// and is no error. Leaving a project that is not joined gives an *Error with
// code NOT_IN_PROJECT.
func (c *Client) Leave(ctx context.Context, projectID string) error {
	c.mu.Lock()
	p := c.projects[projectID]
	if p == nil {
		c.mu.Unlock()
		return &Error{Code: "NOT_IN_PROJECT", Message: "project " + projectID + " is not joined", ProjectID: projectID}
	}
	delete(c.projects, projectID)
	p.settle(JoinResult{}, ErrLeft)
	ws, sse := c.ws, c.sse
	c.mu.Unlock()
	switch {
	case ws != nil:
		ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
		_, err := ws.request(ctx, "leave_project", map[string]string{"projectId": projectID})
		if errors.Is(err, errConnClosed) {
			return nil
		}
		return err
	case sse != nil:
		sse.reopen()
	}
	return nil
}

// Ping measures a round trip to the server: a ping frame answered by pong over
// WebSocket, a GET of /api/websocket/health over SSE.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	c.mu.Lock()
	ws, sse, closed := c.ws, c.sse, c.closed
	c.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	start := time.Now()
	switch {
	case ws != nil:
		if _, err := ws.request(ctx, "ping", nil); err != nil {
			if errors.Is(err, errConnClosed) {
				return 0, ErrNotConnected
			}
			return 0, err
		}
	case sse != nil:
		if err := c.health(ctx); err != nil {
			return 0, err
		}
	default:
		return 0, ErrNotConnected
	}
	return time.Since(start), nil
}

// SendTyping sends typing_start (typing true) or typing_stop for a story of a
// joined project. WebSocket only: over SSE (one-way) it returns
// ErrNotConnected.
func (c *Client) SendTyping(ctx context.Context, projectID, storyID string, typing bool) error {
	c.mu.Lock()
	ws := c.ws
	_, joined := c.projects[projectID]
	c.mu.Unlock()
	if ws == nil {
		return ErrNotConnected
	}
	if !joined {
		return &Error{Code: "NOT_IN_PROJECT", Message: "project " + projectID + " is not joined", ProjectID: projectID}
	}
	name := "typing_stop"
	if typing {
		name = "typing_start"
	}
	return ws.send(ctx, name, map[string]string{"projectId": projectID, "storyId": storyID})
}

// ------------------------------------------------------------------ state

func (c *Client) setState(s State) {
	c.mu.Lock()
	changed := c.setStateLocked(s)
	c.mu.Unlock()
	if changed {
		c.notifyState(s)
	}
}

// setStateLocked changes the state and reports whether it changed; the
// caller calls notifyState after unlocking.
func (c *Client) setStateLocked(s State) bool {
	if c.state == s || (c.closed && s != StateDisconnected) {
		return false
	}
	c.state = s
	return true
}

func (c *Client) notifyState(s State) {
	c.log.Debug("saga push client state", "state", s)
	if c.opts.OnStateChange != nil {
		c.opts.OnStateChange(s)
	}
}

func (c *Client) settleConnectLocked(err error) {
	for _, w := range c.connWaiters {
		w <- err
	}
	c.connWaiters = nil
}

func (p *project) settle(res JoinResult, err error) {
	for _, w := range p.waiters {
		w <- joinReply{res, err}
	}
	p.waiters = nil
}

// ------------------------------------------------------------------ the connection loop

// failure says why an attempt failed or a connection was lost.
type failure struct {
	err   error
	fatal bool // retrying cannot help
	auth  bool // the token was refused: get a new one
}

// run connects, keeps the connection, and reconnects with backoff until
// Close or a fatal failure.
func (c *Client) run(done chan struct{}) {
	defer close(done)
	ctx := c.closeCtx
	attempt := 0
	for {
		f := c.attempt(ctx, &attempt)
		if ctx.Err() != nil {
			c.stop(nil)
			return
		}
		err, fatal := f.err, f.fatal
		if f.auth && c.opts.GetToken == nil {
			// Without GetToken, a handshake refused with 401 cannot get
			// better; a close with 4401 is retried while the token is valid.
			c.mu.Lock()
			tok := c.token
			c.mu.Unlock()
			var e *Error
			if exp, ok := tokenExpiry(tok); ok && !exp.After(time.Now()) {
				fatal = true
				err = &Error{Code: "TOKEN_EXPIRED", Message: "the token has expired and no GetToken was given"}
			} else if errors.As(err, &e) && e.Status == http.StatusUnauthorized {
				fatal = true
			}
		}
		if err != nil {
			c.log.Info("saga push: connection failed", "err", err, "attempt", attempt)
		}
		if fatal {
			c.stop(err)
			return
		}
		if c.opts.ReconnectAttempts > 0 && attempt >= c.opts.ReconnectAttempts {
			c.stop(fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempt, err))
			return
		}
		c.mu.Lock()
		delay := c.shutdownIn
		c.shutdownIn = 0
		c.mu.Unlock()
		if delay <= 0 {
			delay = backoff(attempt, c.opts.ReconnectDelay, c.opts.MaxReconnectDelay)
		}
		attempt++
		c.setState(StateReconnecting)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.stop(nil)
			return
		}
	}
}

// attempt obtains a token, connects, and when connected keeps the
// connection until it is lost. It returns why it ended.
func (c *Client) attempt(ctx context.Context, attempt *int) failure {
	if f, ok := c.obtainToken(ctx); !ok {
		return f
	}
	var last failure
	for _, name := range c.transportOrder() {
		var f failure
		var ok bool
		if name == WebSocket {
			var ws *wsConn
			if ws, f, ok = c.dialWS(ctx); ok {
				*attempt = 0
				return c.keepWS(ctx, ws)
			}
			c.mu.Lock()
			c.wsFailedAt = time.Now()
			c.mu.Unlock()
		} else {
			var s *sseSession
			if s, f, ok = c.openSSE(ctx); ok {
				*attempt = 0
				return c.keepSSE(ctx, s)
			}
		}
		if ctx.Err() != nil || f.fatal || f.auth {
			return f
		}
		c.log.Debug("saga push: transport failed", "transport", name, "err", f.err)
		last = f
	}
	return last
}

// stop ends the loop: fatal error (err), give-up (err) or Close (nil).
func (c *Client) stop(err error) {
	closing := err == nil
	if closing {
		err = ErrClosed
	}
	c.mu.Lock()
	c.running = false
	if !closing {
		c.stopErr = err
	}
	changed := c.setStateLocked(StateDisconnected)
	c.settleConnectLocked(err)
	if !closing {
		for _, p := range c.projects {
			p.settle(JoinResult{}, err)
		}
	}
	c.mu.Unlock()
	if changed {
		c.notifyState(StateDisconnected)
	}
}

// connected switches to the connected state on transport name.
func (c *Client) connected(name string) {
	c.mu.Lock()
	c.transport = name
	c.preferred = name
	c.stopErr = nil
	changed := c.setStateLocked(StateConnected)
	waiters := c.connWaiters
	c.connWaiters = nil
	c.mu.Unlock()
	c.log.Info("saga push: connected", "transport", name)
	if changed {
		c.notifyState(StateConnected)
	}
	for _, w := range waiters {
		w <- nil
	}
}

// teardown forgets the live connection (its reader becomes stale).
func (c *Client) teardown() {
	c.mu.Lock()
	c.cur = nil
	c.ws = nil
	c.sse = nil
	c.transport = ""
	for _, p := range c.projects {
		p.joined = false
	}
	c.mu.Unlock()
}

func (c *Client) obtainToken(ctx context.Context) (failure, bool) {
	if c.opts.GetToken != nil {
		tctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		tok, err := c.opts.GetToken(tctx)
		cancel()
		if err == nil && tok == "" {
			err = errors.New("GetToken returned no token")
		}
		if err != nil {
			return failure{err: fmt.Errorf("client: GetToken: %w", err)}, false
		}
		c.mu.Lock()
		c.token = tok
		c.mu.Unlock()
		return failure{}, true
	}
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	if exp, ok := tokenExpiry(tok); ok && !exp.After(time.Now()) {
		return failure{fatal: true, err: &Error{Code: "TOKEN_EXPIRED", Message: "the token has expired and no GetToken was given"}}, false
	}
	return failure{}, true
}

// transportOrder lists the transports to try, the last working one first
// (WebSocket again wsRetryAfter after it failed).
func (c *Client) transportOrder() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.opts.Transports
	pref := c.preferred
	if pref == "" || list[0] == pref || !slices.Contains(list, pref) {
		return list
	}
	if pref == SSE && time.Since(c.wsFailedAt) > wsRetryAfter {
		return list
	}
	out := []string{pref}
	for _, t := range list {
		if t != pref {
			out = append(out, t)
		}
	}
	return out
}

// refresher schedules token refreshes for a session: min(30 s, 10% of the
// token's lifetime) before it expires, GetToken runs on a goroutine of its
// own and its token comes on done.
type refresher struct {
	c     *Client
	ctx   context.Context
	timer *time.Timer
	fire  <-chan time.Time // nil: nothing scheduled
	done  chan string      // a new token
}

func (c *Client) newRefresher(ctx context.Context) *refresher {
	r := &refresher{c: c, ctx: ctx, done: make(chan string, 1)}
	r.schedule()
	return r
}

// schedule arms the timer for the current token (nothing without GetToken
// or for a token without exp).
func (r *refresher) schedule() {
	r.stop()
	if r.c.opts.GetToken == nil {
		return
	}
	r.c.mu.Lock()
	tok := r.c.token
	r.c.mu.Unlock()
	if d, ok := refreshDelay(tok, time.Now()); ok {
		r.after(max(d, time.Second))
	}
}

func (r *refresher) after(d time.Duration) {
	r.timer = time.NewTimer(d)
	r.fire = r.timer.C
}

func (r *refresher) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	r.timer, r.fire = nil, nil
}

// start calls GetToken in the background (the timer fired).
func (r *refresher) start() {
	r.stop()
	go func() {
		ctx, cancel := context.WithTimeout(r.ctx, r.c.opts.RequestTimeout)
		defer cancel()
		tok, err := r.c.opts.GetToken(ctx)
		if err == nil && tok == "" {
			err = errors.New("GetToken returned no token")
		}
		if err != nil {
			if r.ctx.Err() == nil {
				r.c.log.Warn("saga push: token refresh failed", "err", err)
			}
			tok = ""
		}
		select {
		case r.done <- tok:
		case <-r.ctx.Done():
		}
	}()
}

// got handles a refresh result; it reports whether there is a new token
// (now the client's), and re-arms the timer.
func (r *refresher) got(tok string) bool {
	if tok == "" {
		r.after(5 * time.Second) // try again soon
		return false
	}
	r.c.mu.Lock()
	r.c.token = tok
	r.c.mu.Unlock()
	r.schedule()
	return true
}

// ------------------------------------------------------------------ incoming messages

// wire is one server message.
type wire struct {
	Event     string          `json:"event"`
	ProjectID string          `json:"projectId"`
	Seq       int64           `json:"seq"`
	TS        int64           `json:"ts"`
	Data      json.RawMessage `json:"data"`
	Ack       json.RawMessage `json:"ack"`
}

// handle routes one message read by src (a *wsConn or *sseStream); sseID is
// the SSE event id ("" when none).
func (c *Client) handle(raw []byte, src any, sseID string) {
	var m wire
	if err := json.Unmarshal(raw, &m); err != nil || m.Event == "" {
		c.log.Warn("saga push: unreadable server message", "message", truncate(raw, 200))
		return
	}
	c.readMu.Lock()
	defer c.readMu.Unlock()

	c.mu.Lock()
	if c.cur != src {
		c.mu.Unlock()
		return // a connection that was replaced
	}
	if sseID != "" {
		c.cursor = sseID
		c.cursorKey = src.(*sseStream).key
	}
	answered := false
	if len(m.Ack) > 0 {
		if ws, ok := src.(*wsConn); ok {
			answered = ws.answer(string(m.Ack), &m)
		}
	}
	var resync *Resync
	deliver := true
	switch m.Event {
	case "joined_project":
		resync = c.onJoinedLocked(m.Data)
		deliver = false
	case "left_project":
		deliver = c.onLeftLocked(m.Data)
	case "server_shutdown":
		c.onShutdownLocked(m.Data)
	case "pong", "authenticated":
		deliver = false
	case "error":
		if answered {
			deliver = false
		} else {
			var e Error
			if json.Unmarshal(m.Data, &e) == nil && e.Code == "PROJECT_ACCESS_DENIED" && e.ProjectID != "" {
				deliver = !c.failProjectLocked(e.ProjectID, &e)
			}
		}
	default:
		if m.Seq > 0 && m.ProjectID != "" {
			p := c.projects[m.ProjectID]
			if p == nil || (p.hasSeq && m.Seq <= p.lastSeq) {
				c.mu.Unlock()
				return // not joined, or already seen
			}
			p.lastSeq, p.hasSeq = m.Seq, true
		} else if answered {
			deliver = false
		}
	}
	c.mu.Unlock()

	if resync != nil {
		c.resyncs.push(*resync)
	}
	if !deliver {
		return
	}
	ev := Event{Name: m.Event, ProjectID: m.ProjectID, Seq: m.Seq, TS: m.TS, Data: m.Data, Raw: raw}
	if c.opts.OnEvent != nil {
		c.opts.OnEvent(ev)
		return
	}
	select {
	case c.events <- ev:
	case <-c.closeCtx.Done():
	}
}

// onJoinedLocked records a joined_project and returns a resync when the
// project could not be recovered.
func (c *Client) onJoinedLocked(data []byte) *Resync {
	var d JoinResult
	if json.Unmarshal(data, &d) != nil {
		return nil
	}
	p := c.projects[d.ProjectID]
	if p == nil {
		return nil // left, or given up, meanwhile
	}
	var resync *Resync
	switch {
	case d.Recovered != nil && !*d.Recovered:
		p.lastSeq, p.hasSeq = d.Seq, true
		resync = &Resync{ProjectID: d.ProjectID, Seq: d.Seq}
	case !p.hasSeq:
		p.lastSeq, p.hasSeq = d.Seq, true // first join: live from here
	}
	// recovered: the events after lastSeq follow.
	p.joined = true
	p.info = d
	p.settle(d, nil)
	return resync
}

// onLeftLocked handles left_project; it reports whether the application
// should hear of it (not when it answers our own leave).
func (c *Client) onLeftLocked(data []byte) bool {
	var d struct {
		ProjectID string `json:"projectId"`
		Reason    string `json:"reason"`
	}
	if json.Unmarshal(data, &d) != nil || d.Reason == "requested" {
		return false
	}
	if p := c.projects[d.ProjectID]; p != nil {
		delete(c.projects, d.ProjectID)
		p.settle(JoinResult{}, &Error{Code: "LEFT_PROJECT", Message: "left project " + d.ProjectID + ": " + d.Reason, ProjectID: d.ProjectID})
	}
	return true
}

func (c *Client) onShutdownLocked(data []byte) {
	var d struct {
		ReconnectAfterMs int64 `json:"reconnectAfterMs"`
	}
	if json.Unmarshal(data, &d) != nil || d.ReconnectAfterMs <= 0 {
		return
	}
	ms := time.Duration(d.ReconnectAfterMs) * time.Millisecond
	// At least what the server asks, plus up to as much again (capped by
	// MaxReconnectDelay), so that clients do not return together.
	c.shutdownIn = ms + jitter(min(ms, c.opts.MaxReconnectDelay))
}

// failProjectLocked drops a project the server refused; it reports whether a
// Join was waiting for it (and now returns err).
func (c *Client) failProjectLocked(id string, err error) bool {
	p := c.projects[id]
	if p == nil {
		return false
	}
	delete(c.projects, id)
	waited := len(p.waiters) > 0
	p.settle(JoinResult{}, err)
	return waited
}

// ------------------------------------------------------------------ HTTP helpers

// endpoint returns the URL of path on the server, with query q.
func (c *Client) endpoint(path string, q string) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = q
	return u.String()
}

// health GETs /api/websocket/health: any HTTP answer means reachable.
func (c *Client) health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("/api/websocket/health", ""), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Cache-Control", "no-store")
	resp, err := c.http.Do(req)
	if err != nil {
		return &Error{Code: "TRANSPORT_FAILED", Message: "server not reachable: " + err.Error()}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return nil
}

// httpFailure turns a refused handshake (status, body) into a failure: 401
// is an auth failure, 403 fatal (origin refused), anything else a transport
// failure.
func httpFailure(status int, body []byte, what string) (failure, *Error) {
	var b struct {
		Error *Error `json:"error"`
	}
	e := &Error{Code: "HTTP_" + strconv.Itoa(status), Message: what + ": HTTP " + strconv.Itoa(status)}
	if json.Unmarshal(body, &b) == nil && b.Error != nil && b.Error.Code != "" {
		e = b.Error
	}
	e.Status = status
	switch status {
	case http.StatusUnauthorized:
		return failure{err: e, auth: true}, e
	case http.StatusForbidden:
		return failure{err: e, fatal: true}, e
	}
	return failure{err: &Error{Code: "TRANSPORT_FAILED", Message: what + ": " + e.Message, Status: status}}, e
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// ------------------------------------------------------------------ resyncs

// resyncQueue hands resyncs to a channel without ever blocking the client:
// pending ones are kept, the latest per project, until read.
type resyncQueue struct {
	out    chan Resync
	wake   chan struct{}
	ctx    context.Context
	mu     sync.Mutex
	order  []string
	latest map[string]Resync
	done   chan struct{}
}

func newResyncQueue(ctx context.Context) *resyncQueue {
	q := &resyncQueue{out: make(chan Resync), wake: make(chan struct{}, 1), ctx: ctx, latest: map[string]Resync{}, done: make(chan struct{})}
	go q.pump()
	return q
}

func (q *resyncQueue) push(r Resync) {
	q.mu.Lock()
	if _, ok := q.latest[r.ProjectID]; !ok {
		q.order = append(q.order, r.ProjectID)
	}
	q.latest[r.ProjectID] = r
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *resyncQueue) pump() {
	defer close(q.done)
	defer close(q.out)
	for {
		q.mu.Lock()
		var r Resync
		ok := len(q.order) > 0
		if ok {
			r = q.latest[q.order[0]]
		}
		q.mu.Unlock()
		if !ok {
			select {
			case <-q.wake:
				continue
			case <-q.ctx.Done():
				return
			}
		}
		select {
		case q.out <- r:
			q.mu.Lock()
			if cur, ok := q.latest[r.ProjectID]; ok && cur == r {
				delete(q.latest, r.ProjectID)
				q.order = q.order[1:]
			}
			q.mu.Unlock()
		case <-q.wake:
		case <-q.ctx.Done():
			return
		}
	}
}

func (q *resyncQueue) close() { <-q.done }
