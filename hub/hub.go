// Package hub knows rooms, connections, sequences and fan-out. It knows
// nothing of HTTP, WebSockets or SQL: transports register Conns, the store
// rings the doorbell (Wake) and the hub reads new events through Source.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/saga-family/sagapush/internal/protocol"
)

// Source is what the hub reads events from: the store.
type Source interface {
	// Head returns the project's latest seq (0 when it has none).
	Head(ctx context.Context, projectID string) (int64, error)
	// After returns, in order, at most limit events of the project with
	// seq > after. complete is false when the event right after `after` is
	// no longer held (pruned), so a resume from there is impossible.
	After(ctx context.Context, projectID string, after int64, limit int) (events []Event, complete bool, err error)
}

// Access decides who may join a project.
type Access interface {
	// Role returns the user's role in the project, or an error wrapping
	// ErrAccessDenied.
	Role(ctx context.Context, u *User, projectID string) (string, error)
}

// Ephemeral is a message that is not stored: a typing indicator (to a
// project's members but the sender) or a user-targeted event.
type Ephemeral struct {
	ProjectID string `json:"p,omitempty"` // typing: the room
	UserID    string `json:"u,omitempty"` // user-targeted: the recipient
	Except    string `json:"x,omitempty"` // typing: the sender's user id
	Name      string `json:"n"`
	JSON      []byte `json:"j"` // the encoded message
}

// Presence is told who is in which room (internal/presence.Tracker is
// one). Watch and Unwatch bracket a room's life; Joined and Left are told of
// each member that counts (service connections do not), under the room's
// lock, so that one project's calls come in order. None calls back into the
// hub.
type Presence interface {
	// Watch is told, under the room's lock and before any member joins,
	// that the project's room opened; it may read the store.
	Watch(ctx context.Context, projectID string)
	// Unwatch is told that the room closed.
	Unwatch(projectID string)
	Joined(projectID string, u *User)
	Left(projectID, userID string)
	// Online is the project's online users for a join's answer.
	Online(projectID string) []protocol.OnlineUser
}

// Relay carries ephemeral messages to every instance, this one included,
// which hands them back through Hub.DeliverEphemeral.
type Relay interface {
	PublishEphemeral(ctx context.Context, e Ephemeral) error
}

var (
	ErrAccessDenied = errors.New("project access denied")
	ErrNotInProject = errors.New("not in project")
	ErrTooManyConns = errors.New("too many connections for this user")
	ErrTooManyRooms = errors.New("too many projects joined on this connection")
	ErrClosed       = errors.New("connection closed")
)

// Options configure a Hub. Zero values take the defaults.
type Options struct {
	Source Source
	Access Access
	Relay  Relay
	// Presence, when set, learns every room's members; joined_project then
	// carries online.
	Presence Presence
	Logger   *slog.Logger

	HistorySize     int           // events per room kept in memory for resume (default 256)
	MaxReplay       int           // most events replayed on one join; beyond it recovered:false (default 2000)
	QueueLimit      int           // frames queued per connection before 4001 (default 4096)
	QueueLimitBytes int           // bytes queued per connection before 4001 (default 4 MiB)
	MaxConnsPerUser int           // default 100
	MaxRoomsPerConn int           // default 200
	RateWindow      time.Duration // default 60s
	RateMaxEvents   int           // default 100
	FetchBatch      int           // events read from the store at once (default 500)
	Metrics         *Metrics      // default: NewMetrics(nil)
}

func (o *Options) defaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.HistorySize, 256)
	def(&o.MaxReplay, 2000)
	def(&o.QueueLimit, 4096)
	def(&o.QueueLimitBytes, 4<<20)
	o.QueueLimitBytes = min(o.QueueLimitBytes, math.MaxInt32/4)
	def(&o.MaxConnsPerUser, 100)
	def(&o.MaxRoomsPerConn, protocol.MaxProjects)
	def(&o.RateMaxEvents, 100)
	def(&o.FetchBatch, 500)
	if o.RateWindow <= 0 {
		o.RateWindow = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.QueueLimit <= o.MaxReplay {
		o.QueueLimit = o.MaxReplay + 64
	}
}

// Hub is the transport-agnostic core: rooms per project, users and their
// connections, and ordered, gap-free fan-out of each project's events.
type Hub struct {
	opts    Options
	log     *slog.Logger
	metrics *Metrics
	nextID  atomic.Uint64
	ctx     context.Context
	cancel  context.CancelFunc

	// revocations counts Revoke calls: a join that saw it move while it
	// was under way re-checks its access (the revocation may have scanned
	// the room before the member was in it).
	revocations atomic.Uint64

	budgetBytes int32 // QueueLimitBytes, as a Conn counts it

	// closes holds the close code the server decided for each connection
	// that has not disconnected yet (Conn.decidedLocked).
	closes sync.Map

	mu       sync.RWMutex
	rooms    map[string]*room
	users    map[string]*userState
	conns    map[*Conn]struct{}
	closing  bool
	perTrans map[string]int
}

// New returns a hub. Close it to stop its background work.
func New(opts Options) *Hub {
	opts.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Hub{
		budgetBytes: int32(opts.QueueLimitBytes),
		opts:        opts,
		log:         opts.Logger,
		metrics:     opts.Metrics,
		ctx:         ctx,
		cancel:      cancel,
		rooms:       make(map[string]*room),
		users:       make(map[string]*userState),
		conns:       make(map[*Conn]struct{}),
		perTrans:    make(map[string]int),
	}
}

// Connect registers a new connection of user u.
func (h *Hub) Connect(u *User, transport string, out Outlet) (*Conn, error) {
	c := &Conn{ID: h.nextID.Add(1), Transport: transport, hub: h, out: out}
	c.limit = int32(min(h.opts.QueueLimit, math.MaxInt32))
	c.budget = h.budgetBytes
	c.queue = c.first[:0]
	c.user.Store(u)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, ErrClosed
	}
	us := h.users[u.ID]
	if us == nil {
		lim := rate.NewLimiter(rate.Limit(float64(h.opts.RateMaxEvents)/h.opts.RateWindow.Seconds()), h.opts.RateMaxEvents)
		us = &userState{limiter: lim}
		h.users[u.ID] = us
	}
	if len(us.conns) >= h.opts.MaxConnsPerUser {
		return nil, ErrTooManyConns
	}
	us.conns = append(us.conns, c)
	h.conns[c] = struct{}{}
	h.perTrans[transport]++
	h.metrics.connections.WithLabelValues(transport).Inc()
	return c, nil
}

// Disconnect removes a connection from every room and from the hub. It is
// safe to call more than once.
func (h *Hub) Disconnect(c *Conn) {
	c.mu.Lock()
	c.limit = -1
	c.discardLocked(0)
	rooms := c.rooms
	c.rooms = nil
	c.mu.Unlock()
	for _, m := range rooms {
		h.removeMember(m)
	}
	code, _ := h.closes.LoadAndDelete(c)
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; !ok {
		return
	}
	delete(h.conns, c)
	h.perTrans[c.Transport]--
	h.metrics.connections.WithLabelValues(c.Transport).Dec()
	decided, _ := code.(int)
	h.metrics.disconnects.WithLabelValues(c.Transport, closeReason(decided)).Inc()
	uid := c.User().ID
	if us := h.users[uid]; us != nil {
		if i := slices.Index(us.conns, c); i >= 0 {
			last := len(us.conns) - 1
			us.conns[i] = us.conns[last]
			us.conns[last] = nil
			us.conns = us.conns[:last]
		}
		if len(us.conns) == 0 {
			// The limiter goes with the last connection: a user who
			// reconnects at once gets a fresh bucket, which is the price of
			// not keeping state for users who are gone.
			delete(h.users, uid)
		}
	}
}

// Allow counts one client frame of the connection's user against the rate
// limit. When it is refused, retryAfter says when the next frame may pass.
func (h *Hub) Allow(c *Conn) (ok bool, retryAfter time.Duration) {
	h.mu.RLock()
	us := h.users[c.User().ID]
	h.mu.RUnlock()
	if us == nil {
		return true, 0
	}
	ok, d := allow(us.limiter, time.Now())
	if !ok {
		h.metrics.rateLimited.Inc()
	}
	return ok, d
}

// Leave removes c from the project's room.
func (h *Hub) Leave(c *Conn, projectID string) error {
	c.mu.Lock()
	i := c.memberLocked(projectID)
	var m *member
	if i >= 0 {
		m = c.dropLocked(i)
	}
	c.mu.Unlock()
	if m == nil {
		return ErrNotInProject
	}
	h.removeMember(m)
	return nil
}

// Typing relays a typing indicator of c's user to the project's other
// members, on every instance. The sender must have joined the project.
func (h *Hub) Typing(ctx context.Context, c *Conn, projectID, storyID string, start bool) error {
	if !c.Joined(projectID) {
		return ErrNotInProject
	}
	u := c.User()
	name := protocol.TypingStop
	if start {
		name = protocol.TypingStart
	}
	relay := protocol.TypingRelay{StoryID: storyID, UserID: u.ID}
	if u.Name != "" {
		relay.UserName = &u.Name
	}
	f := Reply(name, projectID, relay, nil)
	return h.opts.Relay.PublishEphemeral(ctx, Ephemeral{ProjectID: projectID, Except: u.ID, Name: name, JSON: f.JSON})
}

// UserEvent encodes a user-targeted event and relays it to that user's
// connections on every instance.
func (h *Hub) UserEvent(ctx context.Context, userID, name string, data json.RawMessage) error {
	b, err := protocol.UserEvent(name, time.Now().UnixMilli(), data)
	if err != nil {
		return err
	}
	return h.opts.Relay.PublishEphemeral(ctx, Ephemeral{UserID: userID, Name: name, JSON: b})
}

// DeliverEphemeral hands an ephemeral message, from this instance or
// another, to its local recipients.
func (h *Hub) DeliverEphemeral(e Ephemeral) {
	f := &Frame{Name: e.Name, ProjectID: e.ProjectID, JSON: e.JSON}
	if e.ProjectID != "" {
		r := h.roomOf(e.ProjectID)
		if r == nil {
			return
		}
		var wakes []*Conn
		r.mu.Lock()
		for _, m := range r.members {
			if m.conn.User().ID != e.Except {
				if _, wake := m.conn.push([]*Frame{f}, len(f.JSON), false); wake {
					wakes = append(wakes, m.conn)
				}
			}
		}
		r.mu.Unlock()
		wakeAll(wakes)
		return
	}
	h.mu.RLock()
	var targets []*Conn
	if us := h.users[e.UserID]; us != nil {
		targets = slices.Clone(us.conns) // delivered outside the lock
	}
	h.mu.RUnlock()
	for _, c := range targets {
		c.enqueue(f, false)
	}
}

// Recheck removes c from every joined room its current user may no longer
// access (after a token refresh: in embedded mode the token's projects claim
// is the access list) and tells it with left_project, reason access_revoked.
func (h *Hub) Recheck(ctx context.Context, c *Conn) {
	for _, p := range c.Projects() {
		h.recheck(ctx, c, p)
	}
}

// recheck removes c from the project's room, with left_project reason
// access_revoked, when its user may no longer access the project.
func (h *Hub) recheck(ctx context.Context, c *Conn, projectID string) {
	_, err := h.opts.Access.Role(ctx, c.User(), projectID)
	switch {
	case errors.Is(err, ErrAccessDenied):
		if h.Leave(c, projectID) == nil {
			c.Send(Reply(protocol.LeftProject, "", protocol.Left{ProjectID: projectID, Reason: protocol.ReasonAccessRevoked}, nil))
		}
	case err != nil:
		h.log.Warn("re-checking access failed", "project", projectID, "user", c.User().ID, "err", err)
	}
}

// Revoke removes the user's connections from the project's room at once and
// tells them with left_project, reason access_revoked.
func (h *Hub) Revoke(projectID, userID string) {
	// Counted before the room is scanned: a join that adds its member
	// after the scan sees the count move and checks again.
	h.revocations.Add(1)
	r := h.roomOf(projectID)
	if r == nil {
		return
	}
	r.mu.Lock()
	var gone []*member
	for _, m := range append([]*member(nil), r.members...) {
		if m.conn.User().ID == userID {
			h.removeLocked(r, m)
			gone = append(gone, m)
		}
	}
	empty := len(r.members) == 0
	r.mu.Unlock()
	for _, m := range gone {
		c := m.conn
		c.mu.Lock()
		for i, cm := range c.rooms {
			if cm == m {
				c.dropLocked(i)
				break
			}
		}
		c.mu.Unlock()
		c.Send(Reply(protocol.LeftProject, "", protocol.Left{ProjectID: projectID, Reason: protocol.ReasonAccessRevoked}, nil))
	}
	if empty {
		h.releaseRoom(r)
	}
	if len(gone) > 0 {
		h.log.Info("access revoked", "project", projectID, "user", userID, "connections", len(gone))
	}
}

// roleService is the role of the Saga backend's tokens: not a user, so no
// users row stands behind its connections.
const roleService = "service"

// UserGone closes the connections of a user whose row was deleted with
// 4401, dropping whatever they still had queued: a deleted user receives
// nothing more. Connections on a service token are not the user's.
func (h *Hub) UserGone(userID string) {
	h.mu.RLock()
	var conns []*Conn
	if us := h.users[userID]; us != nil {
		for _, c := range us.conns {
			if c.User().Role != roleService {
				conns = append(conns, c)
			}
		}
	}
	h.mu.RUnlock()
	for _, c := range conns {
		c.abort(protocol.CloseUnauthenticated, "user deleted")
	}
	if len(conns) > 0 {
		h.log.Info("user deleted: connections closed", "user", userID, "connections", len(conns))
	}
}

// UserIDs lists the users with a connection here, service tokens aside:
// the store checks that they still exist after it may have missed a
// deletion.
func (h *Hub) UserIDs() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ids := make([]string, 0, len(h.users))
	for id, us := range h.users {
		for _, c := range us.conns {
			if c.User().Role != roleService {
				ids = append(ids, id)
				break
			}
		}
	}
	return ids
}

// Wake is the store's doorbell: the project has new events. The room, if any
// member is here, reads them from the store and fans them out in seq order.
func (h *Hub) Wake(projectID string) {
	if r := h.roomOf(projectID); r != nil {
		h.wakeRoom(r, true)
	}
}

// Offer is the doorbell with the event in hand: the store learned it from
// its notification. The room fans it out without reading it back when it
// follows on from the room's position; otherwise it reads the store as on
// Wake. Offers of one project must come in seq order.
func (h *Hub) Offer(e Event) {
	if r := h.roomOf(e.ProjectID); r != nil {
		r.offer(e)
		h.wakeRoom(r, false)
	}
}

// WakeAll rings every room: after a lost notification channel nobody knows
// which projects have news.
func (h *Hub) WakeAll() {
	h.mu.RLock()
	rooms := make([]*room, 0, len(h.rooms))
	for _, r := range h.rooms {
		rooms = append(rooms, r)
	}
	h.mu.RUnlock()
	for _, r := range rooms {
		h.wakeRoom(r, true)
	}
}

// Shutdown sends server_shutdown to every connection, then a close with 1001
// once that message is written. New connections are refused from now on.
func (h *Hub) Shutdown(reconnectAfter time.Duration) {
	h.mu.Lock()
	h.closing = true
	conns := make([]*Conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	f := ShutdownFrame(reconnectAfter)
	for _, c := range conns {
		c.enqueue(f, true)
		c.CloseAfterFlush(protocol.CloseGoingAway, "server shutting down")
	}
}

// ShutdownFrame is the server_shutdown message.
func ShutdownFrame(reconnectAfter time.Duration) *Frame {
	return Reply(protocol.ServerShutdown, "", protocol.ShutdownData{Message: "server shutting down", ReconnectAfterMs: reconnectAfter.Milliseconds()}, nil)
}

// Close stops the hub's background work.
func (h *Hub) Close() { h.cancel() }

// Len returns the number of open connections.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.conns)
}
