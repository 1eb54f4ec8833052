// Package presence knows who is online in each project, on every instance
// (docs/protocol.md, presence). The hub tells it, under a room's lock so
// that one project's calls come in order, when a member joins or leaves and
// when a room opens or closes. It counts members per (project, user) on
// this instance, keeps a user online for the grace after its last member
// left, writes only the 0 <-> 1 transitions (and, at most once a second,
// connection counts) to a Backend the instances share, reads the other
// instances' users of a project when the Backend says the project changed,
// and announces every change of a project's online set to the room's
// members, in order. Without a Backend (embedded mode) it is all memory.
//
// Lock order: a room's lock, then Tracker.mu. The tracker calls nothing
// outside itself while holding mu: announcements go out from a goroutine of
// their own, in the order they were decided.
package presence

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Options configure a Tracker.
type Options struct {
	Backend Backend // nil: this instance is alone (embedded mode)
	// Announce delivers a presence message to a project's members here
	// (the hub's DeliverEphemeral).
	Announce func(hub.Ephemeral)
	Grace    time.Duration // PRESENCE_GRACE_MS
	TTL      time.Duration // PRESENCE_TTL_MS: a silent instance's users go within it
	// MaxUsers is the most online users a project's members are told
	// about one by one (default 100): beyond it joined_project has no
	// online and user_online/user_offline stop, as every change would go
	// to every member.
	MaxUsers   int
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics not registered
}

// Tracker is one instance's presence.
type Tracker struct {
	opts    Options
	log     *slog.Logger
	metrics metrics
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex
	projects map[string]*project
	outbox   []hub.Ephemeral // announcements not delivered yet, in order
	w        writes          // rows to write (writer.go)
	r        reads           // projects to read again (reader.go)
	g        graces          // departures waiting for their grace (grace.go)

	outSig chan struct{}
}

// New returns a tracker; Start begins its background work.
func New(opts Options) *Tracker {
	if opts.MaxUsers <= 0 {
		opts.MaxUsers = 100
	}
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Tracker{
		opts:     opts,
		log:      opts.Logger,
		metrics:  newMetrics(opts.Registerer),
		ctx:      ctx,
		cancel:   cancel,
		projects: make(map[string]*project),
		outSig:   make(chan struct{}, 1),
	}
	t.w.init()
	t.r.init()
	t.g.init()
	return t
}

// Start begins announcing, waiting out graces and, with a Backend, taking
// this instance's lease, writing, reading and sweeping. The lease is taken
// in the background when the database is not reachable now.
func (t *Tracker) Start() {
	t.wg.Add(2)
	go t.announceLoop()
	go t.graceLoop()
	if t.opts.Backend != nil {
		t.wg.Add(3)
		go t.writeLoop()
		go t.readLoop()
		go t.sweepLoop()
	}
}

// Close stops the background work. With a Backend, the instance's lease is
// made to end after the grace, so that its users stay online while their
// clients reconnect to another instance, and go offline everywhere if they
// do not.
func (t *Tracker) Close(ctx context.Context) {
	t.cancel()
	t.wg.Wait()
	if t.opts.Backend != nil {
		if err := t.opts.Backend.Goodbye(ctx, t.opts.Grace); err != nil {
			t.log.Warn("presence: ending the lease failed; other instances wait for it to expire", "err", err)
		}
	}
}

// get returns the project's state, made when missing. mu is held.
func (t *Tracker) get(id string) *project {
	p := t.projects[id]
	if p == nil {
		p = &project{id: id}
		t.projects[id] = p
	}
	return p
}

// forget drops a project nobody watches and nobody is in here. mu is held.
func (t *Tracker) forget(p *project) {
	if !p.watched && len(p.users) == 0 {
		delete(t.projects, p.id)
	}
}

// Watch is told that the project's room opened here (under its lock,
// before any member joins): from now on changes are announced to it. With a
// Backend, the other instances' users are read first, so that the first
// join's list is whole. A failed read leaves the list to this instance's
// users until the reader's retry.
func (t *Tracker) Watch(ctx context.Context, projectID string) {
	t.mu.Lock()
	p := t.get(projectID)
	p.watched = true
	b := t.opts.Backend
	if b == nil || p.loaded > 0 {
		t.mu.Unlock()
		return
	}
	ticket := t.r.nextTicket()
	t.mu.Unlock()
	rows, err := b.Remote(ctx, []string{projectID})
	t.metrics.reads.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.log.Warn("presence: reading the project's users failed; retrying", "project", projectID, "err", err)
		t.r.stale[projectID] = struct{}{}
		signal(t.r.sig)
		return
	}
	t.applyLocked(projectID, ticket, rows, false)
}

// Unwatch is told that the project's room closed here: other instances'
// users are forgotten until it opens again.
func (t *Tracker) Unwatch(projectID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.projects[projectID]
	if p == nil {
		return
	}
	p.watched, p.loaded = false, 0
	for i := len(p.users) - 1; i >= 0; i-- {
		if e := &p.users[i]; e.remote >= 0 {
			e.remote = -1
			t.updateLocked(p, e.user)
		}
	}
	t.forget(p)
}

// Joined is told, under the room's lock, that a member of user u joined
// the project here. A service connection is never told: it does not count.
func (t *Tracker) Joined(projectID string, u *hub.User) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.get(projectID)
	e := p.find(u.ID)
	if e == nil {
		e = p.add(u.ID, u.Name)
	}
	switch {
	case e.n > 0:
		t.w.mark(key{projectID, u.ID}, false)
	case e.departure != 0:
		e.departure = 0 // back within the grace: nothing to say
		t.w.mark(key{projectID, u.ID}, false)
	default:
		t.metrics.users.Inc()
		t.w.mark(key{projectID, u.ID}, true)
		if !e.online {
			e.name = u.Name
		}
	}
	e.n++
	t.updateLocked(p, u.ID)
}

// Left is told, under the room's lock, that a member of the user left the
// project here (leave, close, drop, revocation). The user's last member
// starts the grace.
func (t *Tracker) Left(projectID, userID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.projects[projectID]
	if p == nil {
		return
	}
	e := p.find(userID)
	if e == nil || e.n == 0 {
		return
	}
	e.n--
	t.w.mark(key{projectID, userID}, false)
	if e.n == 0 {
		if t.opts.Grace <= 0 {
			t.departLocked(p, userID)
			return
		}
		e.departure = t.g.add(projectID, userID, time.Now().Add(t.opts.Grace))
	}
}

// departLocked ends a local user whose grace is over.
func (t *Tracker) departLocked(p *project, userID string) {
	if e := p.find(userID); e != nil {
		e.departure = 0
	}
	t.metrics.users.Dec()
	t.w.mark(key{p.id, userID}, true)
	t.updateLocked(p, userID)
	t.forget(p)
}

// updateLocked brings the user's place in the project's online set in line
// with what is known (here or elsewhere), announces a change to the room,
// and drops an entry that holds nothing any more. mu is held.
func (t *Tracker) updateLocked(p *project, userID string) {
	e := p.find(userID)
	if e == nil {
		return
	}
	now := e.local() || e.remote >= 0
	switch {
	case now && !e.online:
		e.online = true
		p.online++
		if p.watched && p.online <= t.opts.MaxUsers {
			f := hub.Reply(protocol.UserOnline, p.id, protocol.OnlineUser{UserID: userID, UserName: protocol.NameOrNull(e.name)}, nil)
			t.announceLocked(hub.Ephemeral{ProjectID: p.id, Except: userID, Name: protocol.UserOnline, JSON: f.JSON})
		}
	case !now && e.online:
		over := p.online > t.opts.MaxUsers
		e.online = false
		p.online--
		if p.watched && !over {
			f := hub.Reply(protocol.UserOffline, p.id, protocol.OfflineUser{UserID: userID}, nil)
			t.announceLocked(hub.Ephemeral{ProjectID: p.id, Name: protocol.UserOffline, JSON: f.JSON})
		}
	}
	p.removeIdle(userID)
}

// Online returns the project's online users, sorted by userId, for a
// join's answer; nil when there are more than MaxUsers.
func (t *Tracker) Online(projectID string) []protocol.OnlineUser {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.projects[projectID]
	if p == nil {
		return []protocol.OnlineUser{}
	}
	if p.online > t.opts.MaxUsers {
		return nil
	}
	out := make([]protocol.OnlineUser, 0, p.online)
	for i := range p.users {
		if e := &p.users[i]; e.online {
			out = append(out, protocol.OnlineUser{UserID: e.user, UserName: protocol.NameOrNull(e.name)})
		}
	}
	slices.SortFunc(out, func(a, b protocol.OnlineUser) int { return strings.Compare(a.UserID, b.UserID) })
	return out
}

// List returns the project's online users with their connections on every
// instance, for the API. A project with a room here answers with the
// online set its members were told, so that joins, messages and the API
// agree; the counts of other instances are read now (they are written at
// most about a second late).
func (t *Tracker) List(ctx context.Context, projectID string) ([]protocol.PresenceUser, error) {
	var rows []Row
	if b := t.opts.Backend; b != nil {
		var err error
		if rows, err = b.Remote(ctx, []string{projectID}); err != nil {
			return nil, err
		}
		t.metrics.reads.Inc()
	}
	conns := make(map[string]int)
	names := make(map[string]string)
	for _, r := range rows {
		conns[r.User] += r.Conns
		if _, ok := names[r.User]; !ok {
			names[r.User] = r.Name
		}
	}
	t.mu.Lock()
	p := t.projects[projectID]
	var users map[string]string // who is listed, with the name
	if p != nil {
		if p.watched {
			users = make(map[string]string, p.online)
		}
		for i := range p.users {
			e := &p.users[i]
			conns[e.user] += int(e.n)
			switch {
			case p.watched && e.online:
				users[e.user] = e.name
			case !p.watched && e.local():
				names[e.user] = e.name
			}
		}
	}
	t.mu.Unlock()
	if users == nil {
		users = names // nobody watches here: the union of what is known
	}
	out := make([]protocol.PresenceUser, 0, len(users))
	for id, name := range users {
		out = append(out, protocol.PresenceUser{UserID: id, UserName: protocol.NameOrNull(name), Connections: conns[id]})
	}
	slices.SortFunc(out, func(a, b protocol.PresenceUser) int { return strings.Compare(a.UserID, b.UserID) })
	return out, nil
}

// announceLocked queues a message for the room, in order. mu is held.
func (t *Tracker) announceLocked(e hub.Ephemeral) {
	t.outbox = append(t.outbox, e)
	signal(t.outSig)
}

// announceLoop delivers announcements in the order they were decided. A
// room's members all get them, a member that joined after the change as
// well: presence messages set state, so one that repeats what a join's list
// said changes nothing.
func (t *Tracker) announceLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.outSig:
		}
		t.mu.Lock()
		out := t.outbox
		t.outbox = nil
		t.mu.Unlock()
		for _, e := range out {
			t.opts.Announce(e)
			t.metrics.announced.WithLabelValues(e.Name).Inc()
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
