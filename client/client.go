// Package client is the Go client of Saga push: reconnect, resume and both
// transports, with the semantics of the browser client.
//
// It follows web/client.js (docs/protocol.md section 11) choice for choice:
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
//   - No token ever goes into a URL (proxies and logs keep URLs): before
//     every WebSocket dial and every event stream (re)open the client trades
//     its token for a one-time ticket (POST /api/tickets, the token in the
//     Authorization header) and connects with ?ticket=. A ticket refused
//     (HTTP 401) counts as a refused token.
//   - Presence: [Client.Presence] is a joined project's online list, which
//     each joined_project replaces (after a reconnect too) and user_online /
//     user_offline change as state changes: a user already listed coming
//     online, or one not listed going offline, changes nothing (a join's list
//     and a message already on its way may overlap). Every change is sent on
//     [Client.PresenceChanges]. Leaving a project forgets its list.
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
// request, server_shutdown, user_online, user_offline) arrive on
// [Client.Events], or are handed to [Options.OnEvent]. Answers to the
// client's own requests (joined_project, left_project for a leave, pong,
// authenticated) are not delivered there: they are the results of
// [Client.Join], [Client.Leave] and [Client.Ping].
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
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
	// HTTPClient is used for the WebSocket handshake, the event stream,
	// tickets and the health check. Its Timeout must be 0 (streams are
	// long-lived). Default: a client over http.DefaultTransport.
	HTTPClient *http.Client
	// Logger receives connection events (default: discarded).
	Logger *slog.Logger
	// MaxMessageSize is the largest server message accepted (default 16 MiB).
	MaxMessageSize int64
}

// Error is an error sent by the server ({"code","message",...}, docs/protocol.md
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
	opts     Options
	base     *url.URL
	http     *http.Client
	log      *slog.Logger
	events   chan Event
	resyncs  *latestQueue[Resync]
	presence *latestQueue[PresenceChange]

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
	c.resyncs = newLatestQueue[Resync](c.closeCtx)
	c.presence = newLatestQueue[PresenceChange](c.closeCtx)
	return c, nil
}

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
		c.presence.close()
		if c.events != nil {
			close(c.events)
		}
	})
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
