// Package session handles what a client says, whatever the transport carries
// it: authentication (a handshake token, the auth frame, a refresh to the
// same user, expiry), join_project and leave_project with since, ping,
// typing, the rate limit and abuse, and the per-connection limits. A
// transport only moves bytes: it opens a Session with a Peer, hands it each
// client frame (Receive) or the joins of its request (Join), and writes what
// the hub queues for the connection.
package session

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Peer is the transport's side of one session. Besides the hub's Outlet
// (Wake and Abort, which must not block), it takes the hub connection once
// the session has one, writes before there is one, and closes.
type Peer interface {
	hub.Outlet
	// Attach hands over the hub connection of an authenticated session:
	// from now on the peer writes what the hub queues on it.
	Attach(c *hub.Conn)
	// Direct writes a message before authentication, when there is no hub
	// queue yet. It may drop it (a peer that cannot keep up with an
	// unauthenticated client owes it no answers).
	Direct(msg []byte)
	// Close closes with the code once what was written before is out.
	Close(code int, reason string)
}

// Options configure a Manager.
type Options struct {
	Hub  *hub.Hub
	Auth *Authenticator
	// AuthTimeout is the auth frame's deadline after an upgrade without a
	// token (default 10s).
	AuthTimeout time.Duration
	// Leeway is how long past its exp a token stays good, as the verifier
	// allows (default auth.DefaultLeeway): a token accepted inside the
	// leeway is not cut at once.
	Leeway time.Duration
	// RateWindow is the window of the auth frames' own limit (default 60s):
	// AuthFrames per window and connection, the first one included.
	RateWindow time.Duration
	AuthFrames int // default 10
	// Logger gets the debug lines of connects, refusals, joins, leaves and
	// ends (never a token or ticket); default slog.Default().
	Logger *slog.Logger
}

// Manager opens sessions and runs their deadlines, for every transport.
type Manager struct {
	hub       *hub.Hub
	auth      *Authenticator
	opts      Options
	deadlines deadlines
}

// NewManager returns a manager.
func NewManager(opts Options) *Manager {
	if opts.AuthTimeout <= 0 {
		opts.AuthTimeout = 10 * time.Second
	}
	if opts.Leeway <= 0 {
		opts.Leeway = auth.DefaultLeeway
	}
	if opts.RateWindow <= 0 {
		opts.RateWindow = time.Minute
	}
	if opts.AuthFrames <= 0 {
		opts.AuthFrames = 10
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Manager{hub: opts.Hub, auth: opts.Auth, opts: opts}
}

// Hub returns the hub sessions connect to.
func (m *Manager) Hub() *hub.Hub { return m.hub }

// Session is one client connection as the protocol sees it.
type Session struct {
	m         *Manager
	peer      Peer
	transport string

	mu         sync.Mutex
	conn       *hub.Conn // nil until authenticated
	expires    time.Time // the token's exp; zero: none
	ended      bool
	working    bool          // a worker goroutine handles the inbox
	inbox      [][]byte      // client frames waiting for the worker
	inboxCond  *sync.Cond    // made when Receive first has to wait
	refusedRun int32         // rate-limited frames in a row (worker only)
	authFrames *rate.Limiter // made at the first auth frame (worker only)

	deadlineAt  time.Time // guarded by deadlines.mu
	deadlineIdx int       // index in the deadline heap; -1 when none
}

// New opens an unauthenticated session of the named transport.
func (m *Manager) New(transport string, peer Peer) *Session {
	return &Session{m: m, peer: peer, transport: transport, deadlineIdx: -1}
}

// Conn returns the session's hub connection, nil until authenticated.
func (s *Session) Conn() *hub.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// Authenticate takes the credential of the handshake (a token or a ticket)
// and connects the session to the hub. A refusal says how HTTP answers it.
func (s *Session) Authenticate(ctx context.Context, cred Credential) *Refusal {
	u, exp, e := s.m.auth.AuthenticateCredential(ctx, cred)
	if e != nil {
		s.m.opts.Logger.Debug("auth refused", "transport", s.transport, "code", e.Code, "reason", e.Message)
		return authRefusal(e)
	}
	conn, err := s.m.hub.Connect(u, s.transport, s.peer)
	if err != nil {
		s.m.opts.Logger.Debug("connection refused", "transport", s.transport, "user", u.ID, "reason", err.Error())
		return connectRefusal(err)
	}
	s.m.opts.Logger.Debug("connected", "conn", conn.ID, "transport", s.transport, "user", u.ID, "role", u.Role)
	s.mu.Lock()
	s.conn, s.expires = conn, exp
	s.mu.Unlock()
	s.peer.Attach(conn)
	return nil
}

// Start begins the session's clock once the transport is open: the auth
// frame's deadline when it has no token yet, else the token's expiry.
func (s *Session) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if s.conn == nil {
		s.m.deadlines.set(s, time.Now().Add(s.m.opts.AuthTimeout))
	} else {
		s.armExpiryLocked()
	}
}

// End is the transport's word that the connection is gone, with the
// WebSocket close code the client sent (1006: none came), or 0 when the
// transport has none (SSE). It leaves every room and the hub; frames still
// waiting for the worker are dropped.
func (s *Session) End(closeCode int) {
	s.mu.Lock()
	s.ended = true
	if s.inboxCond != nil {
		s.inboxCond.Broadcast()
	}
	conn := s.conn
	s.mu.Unlock()
	s.m.deadlines.remove(s)
	if conn != nil {
		attrs := []any{"conn", conn.ID, "transport", s.transport, "user", conn.User().ID}
		if closeCode != 0 {
			attrs = append(attrs, "code", closeCode)
		}
		s.m.opts.Logger.Debug("disconnected", attrs...)
		s.m.hub.Disconnect(conn)
	}
}

// maxInbox bounds the client frames waiting for the worker; Receive waits
// beyond it, which pushes back on the client through TCP.
const maxInbox = 32

// Receive takes one client frame; nil stands for a binary frame. It only
// queues the frame: handling it (JSON, joins, store reads) would grow the
// stack of the transport's read loop, which an idle connection keeps for
// its whole life. A worker goroutine, started on demand, handles the frames
// in order and exits when none is left.
func (s *Session) Receive(msg []byte) {
	s.mu.Lock()
	for len(s.inbox) >= maxInbox && !s.ended {
		if s.inboxCond == nil {
			s.inboxCond = sync.NewCond(&s.mu)
		}
		s.inboxCond.Wait()
	}
	s.inbox = append(s.inbox, msg)
	start := !s.working
	s.working = true
	s.mu.Unlock()
	if start {
		go s.work()
	}
}

// work handles queued frames in arrival order until the inbox is empty.
func (s *Session) work() {
	for {
		s.mu.Lock()
		if len(s.inbox) == 0 {
			s.working = false
			s.inbox = nil
			s.mu.Unlock()
			return
		}
		msg := s.inbox[0]
		s.inbox[0] = nil
		s.inbox = s.inbox[1:]
		if s.inboxCond != nil {
			s.inboxCond.Signal()
		}
		s.mu.Unlock()
		s.handle(msg)
	}
}

// reply answers a frame with an error, in order with everything else.
func (s *Session) replyError(e protocol.Error, ack json.RawMessage) {
	if conn := s.Conn(); conn != nil {
		conn.Send(hub.ErrorFrame(e, ack))
		return
	}
	s.peer.Direct(protocol.ErrorMessage(e, ack))
}

// abuseRun is how many rate-limited frames in a row make a client abusive:
// one that ignores retryAfterMs, not one that overshot once.
const abuseRun = 100

// handle acts on one client frame.
func (s *Session) handle(msg []byte) {
	conn := s.Conn()
	var f protocol.ClientFrame
	var bad error
	if msg == nil {
		bad = errors.New("binary frames are not accepted")
	} else {
		f, bad = protocol.DecodeClientFrame(msg)
	}
	// Every frame of an authenticated user counts against the rate limit,
	// bad ones included, except auth: a token refresh is never refused for
	// being busy.
	if conn != nil && (bad != nil || f.Event != protocol.Auth) {
		if ok, retry := s.m.hub.Allow(conn); !ok {
			s.replyError(protocol.Error{Code: protocol.CodeRateLimitExceeded, Message: "too many events", RetryAfterMs: max(retry.Milliseconds(), 1)}, f.Ack)
			if s.refusedRun++; s.refusedRun >= abuseRun {
				conn.CloseAfterFlush(protocol.CloseTooMany, "sustained abuse") // after the answer
			}
			return
		}
		s.refusedRun = 0
	}
	if bad != nil {
		s.replyError(protocol.Error{Code: protocol.CodeInvalidMessage, Message: bad.Error()}, f.Ack)
		return
	}
	s.m.hub.Metrics().MessagesIn.WithLabelValues(s.transport, protocol.ClientEvent(f.Event)).Inc()
	if f.Event == protocol.Auth {
		if ok, retry := s.allowAuth(); !ok {
			s.replyError(protocol.Error{Code: protocol.CodeRateLimitExceeded, Message: "too many auth frames", RetryAfterMs: max(retry.Milliseconds(), 1)}, f.Ack)
			return
		}
		s.handleAuth(f)
		return
	}
	if conn == nil {
		s.replyError(protocol.Error{Code: protocol.CodeUnauthorized, Message: "authenticate first with an auth frame"}, f.Ack)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch f.Event {
	case protocol.JoinProject:
		ref, err := protocol.DecodeProjectRef(f.Data)
		if err != nil {
			s.replyError(protocol.Error{Code: protocol.CodeInvalidMessage, Message: err.Error()}, f.Ack)
			return
		}
		if _, e := s.Join(ctx, ref.ProjectID, ref.Since, f.Ack); e != nil {
			s.replyError(*e, f.Ack)
		}
	case protocol.LeaveProject:
		ref, err := protocol.DecodeProjectRef(f.Data)
		if err != nil {
			s.replyError(protocol.Error{Code: protocol.CodeInvalidMessage, Message: err.Error()}, f.Ack)
			return
		}
		if err := s.m.hub.Leave(conn, ref.ProjectID); err != nil {
			s.replyError(protocol.Error{Code: protocol.CodeNotInProject, Message: "not joined to this project", ProjectID: ref.ProjectID}, f.Ack)
			return
		}
		s.m.opts.Logger.Debug("left", "conn", conn.ID, "user", conn.User().ID, "project", ref.ProjectID)
		conn.Send(hub.Reply(protocol.LeftProject, "", protocol.Left{ProjectID: ref.ProjectID, Reason: protocol.ReasonRequested}, f.Ack))
	case protocol.Ping:
		conn.Send(hub.Reply(protocol.Pong, "", protocol.PongData{TS: time.Now().UnixMilli()}, f.Ack))
	case protocol.TypingStart, protocol.TypingStop:
		t, err := protocol.DecodeTyping(f.Data)
		if err != nil {
			s.replyError(protocol.Error{Code: protocol.CodeInvalidMessage, Message: err.Error()}, f.Ack)
			return
		}
		err = s.m.hub.Typing(ctx, conn, t.ProjectID, t.StoryID, f.Event == protocol.TypingStart)
		switch {
		case errors.Is(err, hub.ErrNotInProject):
			s.replyError(protocol.Error{Code: protocol.CodeNotInProject, Message: "join the project before typing", ProjectID: t.ProjectID}, f.Ack)
		case err != nil:
			s.replyError(protocol.Error{Code: protocol.CodeInternalError, Message: "typing could not be relayed"}, f.Ack)
		}
	default:
		s.replyError(protocol.Error{Code: protocol.CodeUnknownEvent, Message: "unknown event"}, f.Ack)
	}
}

// Join adds the session to the project's room (protocol.JoinProject): the
// hub queues joined_project, carrying ack, then the replay after since,
// then live events. A refusal comes back as the error to answer with.
func (s *Session) Join(ctx context.Context, projectID string, since *int64, ack json.RawMessage) (protocol.Joined, *protocol.Error) {
	conn := s.Conn()
	res, err := s.m.hub.Join(ctx, conn, projectID, since, ack)
	s.logJoin(conn, projectID, err)
	return res, joinError(err, projectID)
}

// JoinAll joins each project (the query of an SSE stream), with the since
// given for it, deciding access for all of them at once. A refused project
// comes back with the error to answer with, the others with their joins.
func (s *Session) JoinAll(ctx context.Context, projectIDs []string, since protocol.Cursor) ([]protocol.Joined, []protocol.Error) {
	var joined []protocol.Joined
	var refused []protocol.Error
	conn := s.Conn()
	for _, o := range s.m.hub.JoinAll(ctx, conn, projectIDs, since) {
		s.logJoin(conn, o.ProjectID, o.Err)
		if e := joinError(o.Err, o.ProjectID); e != nil {
			refused = append(refused, *e)
			continue
		}
		joined = append(joined, o.Joined)
	}
	return joined, refused
}

// logJoin logs a join or its refusal at debug.
func (s *Session) logJoin(conn *hub.Conn, projectID string, err error) {
	if err != nil {
		s.m.opts.Logger.Debug("join refused", "conn", conn.ID, "user", conn.User().ID, "project", projectID, "reason", err.Error())
		return
	}
	s.m.opts.Logger.Debug("joined", "conn", conn.ID, "user", conn.User().ID, "project", projectID)
}

// joinError maps a refused join to the error to answer with; nil for none.
func joinError(err error, projectID string) *protocol.Error {
	if err == nil {
		return nil
	}
	e := &protocol.Error{Code: protocol.CodeJoinProjectError, Message: "the project could not be joined now", ProjectID: projectID}
	switch {
	case errors.Is(err, hub.ErrAccessDenied):
		e.Code, e.Message = protocol.CodeProjectAccessDenied, "you may not access this project"
	case errors.Is(err, hub.ErrTooManyRooms):
		e.Message = err.Error()
	}
	return e
}

// allowAuth takes one auth frame from the connection's own limit: each is
// a token verification and, with a database, a users look-up, so they are
// limited apart from (and do not count toward) the user's frames.
func (s *Session) allowAuth() (bool, time.Duration) {
	if s.authFrames == nil {
		n := s.m.opts.AuthFrames
		s.authFrames = rate.NewLimiter(rate.Limit(float64(n)/s.m.opts.RateWindow.Seconds()), n)
	}
	now := time.Now()
	r := s.authFrames.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// handleAuth takes the first token (auth frame) or a refresh.
func (s *Session) handleAuth(f protocol.ClientFrame) {
	token, err := protocol.DecodeAuth(f.Data)
	if err != nil {
		s.replyError(protocol.Error{Code: protocol.CodeInvalidMessage, Message: err.Error()}, f.Ack)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, exp, e := s.m.auth.Authenticate(ctx, token)
	if e != nil {
		s.m.opts.Logger.Debug("auth frame refused", "transport", s.transport, "code", e.Code, "reason", e.Message)
		s.replyError(*e, f.Ack)
		return
	}
	conn := s.Conn()
	refresh := conn != nil
	if refresh {
		if conn.User().ID != u.ID {
			s.replyError(protocol.Error{Code: protocol.CodeUnauthorized, Message: "the new token names another user"}, f.Ack)
			return
		}
		conn.SetUser(u)
	} else {
		conn, err = s.m.hub.Connect(u, s.transport, s.peer)
		if errors.Is(err, hub.ErrClosed) {
			s.peer.Close(protocol.CloseGoingAway, "server shutting down")
			return
		}
		if err != nil {
			s.replyError(protocol.Error{Code: protocol.CodeRateLimitExceeded, Message: err.Error()}, f.Ack)
			s.peer.Close(protocol.CloseTooMany, "too many connections")
			return
		}
	}
	s.mu.Lock()
	if s.ended {
		// The connection ended while this frame waited for the worker:
		// End did not see the hub connection, so it is undone here.
		s.mu.Unlock()
		if !refresh {
			s.m.hub.Disconnect(conn)
		}
		return
	}
	s.conn, s.expires = conn, exp
	s.armExpiryLocked()
	s.mu.Unlock()
	if !refresh {
		s.m.opts.Logger.Debug("connected", "conn", conn.ID, "transport", s.transport, "user", u.ID, "role", u.Role)
		s.peer.Attach(conn)
	}
	data := protocol.AuthenticatedData{UserID: u.ID}
	if !exp.IsZero() {
		ms := exp.UnixMilli()
		data.ExpiresAt = &ms
	}
	conn.Send(hub.Reply(protocol.Authenticated, "", data, f.Ack))
	if refresh {
		// The new token may grant fewer projects.
		s.m.hub.Recheck(ctx, conn)
	}
}

// armExpiryLocked schedules the current token's expiry; the auth deadline
// or a previous token's expiry left in the schedule is then stale.
func (s *Session) armExpiryLocked() {
	if s.expires.IsZero() {
		s.m.deadlines.remove(s) // a token without exp: nothing to wait for
		return
	}
	s.m.deadlines.set(s, s.expires.Add(s.m.opts.Leeway))
}

// due runs when a deadline scheduled for s comes: the auth frame's, or the
// token's expiry. A deadline that no longer applies does nothing.
func (s *Session) due(at time.Time) {
	s.mu.Lock()
	conn, exp, ended := s.conn, s.expires, s.ended
	s.mu.Unlock()
	switch {
	case ended:
	case conn == nil:
		s.peer.Close(protocol.CloseNoAuth, "no auth frame in time")
	case !exp.IsZero() && exp.Add(s.m.opts.Leeway).Equal(at):
		conn.Send(hub.ErrorFrame(protocol.Error{Code: protocol.CodeTokenExpired, Message: "token expired"}, nil))
		conn.CloseAfterFlush(protocol.CloseUnauthenticated, "token expired")
	}
}
