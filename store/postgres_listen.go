package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/saga-family/sagapush/hub"
)

// listenerState tracks the one LISTEN connection of the instance. Every
// listener gets a new generation; events of replaced listeners are ignored.
type listenerState struct {
	mu        sync.Mutex
	l         *pq.Listener
	gen       int
	connected bool // the current listener is connected and LISTENing
	// stuck is set when a ping did not come back in time and cleared by the
	// next one that does: a connection can look alive and hear nothing.
	stuck   bool
	pingSeq int64
	ackSeq  int64 // the highest ping of ours heard back
	pending []sentPing

	counts listenerCounts // atomic: not under mu
}

// listenerCounts are what the listener went through (ListenerStats).
type listenerCounts struct {
	reconnects    atomic.Uint64
	replaced      atomic.Uint64
	notifications [len(notificationKinds)]atomic.Uint64
}

// ListenerStats is what the LISTEN connection went through since the store
// opened. The store knows nothing of Prometheus: main exports these.
type ListenerStats struct {
	// Reconnects counts the reconnections after the listener lost its
	// connection (pq's ListenerEventReconnected).
	Reconnects uint64
	// Replaced counts the listeners replaced because their self-check
	// notification did not come back in time (stuck).
	Replaced uint64
	// Notifications counts the notifications heard, by kind; it has every
	// kind (notificationKinds), heard or not.
	Notifications map[string]uint64
}

// notificationKinds name the notifications by their payload's prefix
// (notifyChannel): v event, e event_pointer, r access, x and y ephemeral,
// d user_deleted, o presence, p self_check; anything else is other.
var notificationKinds = [...]string{"event", "event_pointer", "access", "ephemeral", "user_deleted", "presence", "self_check", "other"}

// ListenerStats returns the listener's counts so far.
func (p *Postgres) ListenerStats() ListenerStats {
	c := &p.lst.counts
	st := ListenerStats{Reconnects: c.reconnects.Load(), Replaced: c.replaced.Load(), Notifications: map[string]uint64{}}
	for i, k := range notificationKinds {
		st.Notifications[k] = c.notifications[i].Load()
	}
	return st
}

// countNotification counts one notification by its payload's prefix.
func (c *listenerCounts) countNotification(prefix string) {
	i := len(notificationKinds) - 1 // other
	switch prefix {
	case "v":
		i = 0
	case "e":
		i = 1
	case "r":
		i = 2
	case "x", "y":
		i = 3
	case "d":
		i = 4
	case "o":
		i = 5
	case "p":
		i = 6
	}
	c.notifications[i].Add(1)
}

type sentPing struct {
	n  int64
	at time.Time
}

// queues decouple the listener's goroutine from the Sink and from the
// database: the goroutine that drains Notify never blocks (pq's Notify holds
// 32 entries and a slow reader stalls the connection).
type queues struct {
	mu      sync.Mutex
	wake    map[string]struct{} // projects to wake, coalesced
	wakeAll bool
	offers  []hub.Event // events that came with their notification, in order
	wakeSig chan struct{}

	// deliverMu is held by whoever hands doorbells to the Sink: wakeLoop,
	// or the draining goroutine handing an event over itself when nothing
	// is queued (offerNow). Either way a project's events reach the Sink in
	// order. Taken before goneMu.
	deliverMu sync.Mutex
	sink      Sink // set by Start, for offerNow

	// Revocation checks run in order of arrival (one worker), each (project,
	// user) pair at most once in the queue.
	revoke    []revocation
	revokeSet map[[2]string]bool
	revokeSig chan struct{}

	// Ephemeral messages keep their order (typing start before stop); when
	// the queue is full they are dropped: they are best effort.
	ephemeral chan string
	dropped   int64

	// gone holds deleted users, in order. Whatever delivers to the Sink
	// (doorbells, ephemeral messages, revocations) hands them over first,
	// holding goneMu meanwhile, so nothing notified after a deletion
	// reaches the deleted user.
	gone   []string
	goneMu sync.Mutex
	// checkUsers asks for a check of the connected users' rows.
	checkUsers chan struct{}

	// presence holds projects whose presence rows changed, coalesced;
	// presenceAll: read them all again (notifications were lost).
	presence    map[string]struct{}
	presenceAll bool
	presenceSig chan struct{}
}

type revocation struct {
	project, user string
	attempt       int
}

func (q *queues) init() {
	q.wake = make(map[string]struct{})
	q.wakeSig = make(chan struct{}, 1)
	q.revokeSet = make(map[[2]string]bool)
	q.revokeSig = make(chan struct{}, 1)
	q.ephemeral = make(chan string, 1024)
	q.checkUsers = make(chan struct{}, 1)
	q.presence = make(map[string]struct{})
	q.presenceSig = make(chan struct{}, 1)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (p *Postgres) requestWake(projectID string) {
	p.q.mu.Lock()
	p.q.wake[projectID] = struct{}{}
	p.q.mu.Unlock()
	signal(p.q.wakeSig)
}

// maxOffers bounds the events waiting for the Sink; beyond it an event's
// project is woken instead, and its room reads the store.
const maxOffers = 4096

func (p *Postgres) requestOffer(e hub.Event) {
	p.q.mu.Lock()
	if len(p.q.offers) < maxOffers {
		p.q.offers = append(p.q.offers, e)
	} else {
		p.q.wake[e.ProjectID] = struct{}{}
	}
	p.q.mu.Unlock()
	signal(p.q.wakeSig)
}

// parseEvent decodes a v: notification (after the "v:"), as push_emit
// writes it: seq:µs:name:len:project+data.
func parseEvent(s string) (hub.Event, bool) {
	var f [4]string
	for i := range f {
		var ok bool
		if f[i], s, ok = strings.Cut(s, ":"); !ok {
			return hub.Event{}, false
		}
	}
	seq, err1 := strconv.ParseInt(f[0], 10, 64)
	us, err2 := strconv.ParseInt(f[1], 10, 64)
	n, err3 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || err3 != nil || seq <= 0 || n <= 0 || n > len(s) || !json.Valid([]byte(s[n:])) {
		return hub.Event{}, false
	}
	return hub.Event{ProjectID: s[:n], Seq: seq, Name: f[2], Time: time.UnixMicro(us), Data: json.RawMessage(s[n:])}, true
}

func (p *Postgres) requestUserGone(userID string) {
	p.q.mu.Lock()
	p.q.gone = append(p.q.gone, userID)
	p.q.mu.Unlock()
	signal(p.q.wakeSig)
}

// flushGone hands the deleted users queued so far to the sink.
func (p *Postgres) flushGone(sink Sink) {
	p.q.goneMu.Lock()
	defer p.q.goneMu.Unlock()
	p.q.mu.Lock()
	gone := p.q.gone
	p.q.gone = nil
	p.q.mu.Unlock()
	for _, u := range gone {
		sink.UserGone(u)
	}
}

func (p *Postgres) requestWakeAll() {
	p.q.mu.Lock()
	p.q.wakeAll = true
	p.q.mu.Unlock()
	signal(p.q.wakeSig)
}

func (p *Postgres) requestRevokeCheck(r revocation) {
	key := [2]string{r.project, r.user}
	p.q.mu.Lock()
	if !p.q.revokeSet[key] {
		p.q.revokeSet[key] = true
		p.q.revoke = append(p.q.revoke, r)
	}
	p.q.mu.Unlock()
	signal(p.q.revokeSig)
}

func (p *Postgres) popRevoke() (revocation, bool) {
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	if len(p.q.revoke) == 0 {
		return revocation{}, false
	}
	r := p.q.revoke[0]
	p.q.revoke[0] = revocation{}
	p.q.revoke = p.q.revoke[1:]
	delete(p.q.revokeSet, [2]string{r.project, r.user})
	return r, true
}

// Start opens the LISTEN connection and hands what it hears to sink until
// ctx ends or Close is called. It returns once LISTEN is in effect (or
// after 15 s, leaving the listener to connect in the background: Healthy
// reports it down meanwhile, and its connection wakes every room).
func (p *Postgres) Start(ctx context.Context, sink Sink) error {
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return errors.New("store: closed")
	case p.started:
		p.mu.Unlock()
		return errors.New("store: already started")
	}
	p.started = true
	p.mu.Unlock()

	p.q.sink = sink
	run, cancel := context.WithCancel(p.ctx)
	stopAfter := context.AfterFunc(ctx, cancel)
	p.wg.Add(5)
	go p.wakeLoop(run, sink)
	go p.revokeLoop(run, sink)
	go p.ephemeralLoop(run, sink)
	go p.userCheckLoop(run, sink)
	if ps, ok := sink.(PresenceSink); ok {
		p.wg.Add(1)
		go p.presenceLoop(run, ps)
	}
	listening := p.openListener(run)
	go func() {
		defer cancel()
		defer stopAfter()
		p.healthLoop(run)
	}()

	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case <-listening:
	case <-run.Done():
	case <-t.C:
		p.log.Warn("LISTEN connection not up yet; going on without it")
	}
	return nil
}

// openListener starts a new listener generation: a goroutine drains its
// Notify channel at once, another waits for its LISTEN to take effect.
// The returned channel closes when it has.
func (p *Postgres) openListener(run context.Context) <-chan struct{} {
	s := &p.lst
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.connected = false
	s.pending = nil
	s.mu.Unlock()

	// Jitter, so that instances do not all reconnect at the same instant
	// after a database restart.
	minBackoff := 250*time.Millisecond + rand.N(250*time.Millisecond)
	l := pq.NewListener(p.listenDSN, minBackoff, 10*time.Second, func(ev pq.ListenerEventType, err error) {
		p.listenerEvent(gen, ev, err)
	})
	s.mu.Lock()
	s.l = l
	s.mu.Unlock()

	listening := make(chan struct{})
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		for n := range l.Notify { // closed by l.Close
			p.dispatch(n)
		}
	}()
	go func() {
		defer p.wg.Done()
		// Listen blocks until the connection is up, or the listener closed.
		if err := l.Listen(notifyChannel); err != nil {
			if run.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.log.Error("LISTEN failed", "err", err)
			}
			return
		}
		p.setConnected(gen, true)
		// Doorbells rung and users deleted before LISTEN took effect were
		// not heard here.
		p.requestWakeAll()
		p.requestPresenceAll()
		signal(p.q.checkUsers)
		close(listening)
	}()
	return listening
}

func (p *Postgres) closeListener() {
	p.lst.mu.Lock()
	l := p.lst.l
	p.lst.connected = false
	p.lst.mu.Unlock()
	if l != nil {
		// Blocks while a dial is in progress, at most connect_timeout.
		_ = l.Close()
	}
}

func (p *Postgres) setConnected(gen int, up bool) {
	s := &p.lst
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return
	}
	s.connected = up
	// Pings sent before a (re)connection were lost with the connection.
	s.pending = nil
}

func (p *Postgres) listenerEvent(gen int, ev pq.ListenerEventType, err error) {
	p.lst.mu.Lock()
	current := gen == p.lst.gen
	p.lst.mu.Unlock()
	if !current {
		return // a replaced listener shutting down
	}
	switch ev {
	case pq.ListenerEventConnected:
		p.log.Debug("listener connected")
	case pq.ListenerEventReconnected:
		// pq has re-issued LISTEN; the nil notification that follows wakes
		// every room, as the outage's notifications are lost.
		p.setConnected(gen, true)
		p.lst.counts.reconnects.Add(1)
		p.log.Info("listener reconnected")
	case pq.ListenerEventDisconnected:
		p.setConnected(gen, false)
		p.log.Warn("listener disconnected", "err", err)
	case pq.ListenerEventConnectionAttemptFailed:
		p.setConnected(gen, false)
		p.log.Warn("listener connection attempt failed", "err", err)
	}
}

// dispatch sorts one notification into the queues. It runs on the draining
// goroutine and must never block.
func (p *Postgres) dispatch(n *pq.Notification) {
	if p.dropNotify.Load() {
		return
	}
	if n == nil {
		// pq reconnected: whatever was notified meanwhile is gone.
		p.requestWakeAll()
		p.requestPresenceAll()
		signal(p.q.checkUsers)
		return
	}
	if n.Channel != notifyChannel {
		return
	}
	kind, rest, _ := strings.Cut(n.Extra, ":")
	p.lst.counts.countNotification(kind)
	switch kind {
	case "e":
		p.requestWake(rest)
	case "v":
		if e, ok := parseEvent(rest); ok {
			if !p.offerNow(e) {
				p.requestOffer(e)
			}
		} else {
			p.log.Warn("malformed event notification; waking every room", "bytes", len(n.Extra))
			p.requestWakeAll()
		}
	case "r":
		// Ids are UUIDs: the first colon separates project and user.
		if project, user, ok := strings.Cut(rest, ":"); ok {
			p.requestRevokeCheck(revocation{project: project, user: user})
		}
	case "d":
		p.requestUserGone(rest)
	case "o":
		p.requestPresence(rest)
	case "x", "y":
		select {
		case p.q.ephemeral <- n.Extra:
		default:
			p.q.mu.Lock()
			p.q.dropped++
			dropped := p.q.dropped
			p.q.mu.Unlock()
			if dropped&(dropped-1) == 0 { // log at 1, 2, 4, 8, ... drops
				p.log.Warn("ephemeral queue full; messages dropped", "dropped_total", dropped)
			}
		}
	case "p":
		instance, num, _ := strings.Cut(rest, ":")
		if instance != p.instance {
			return // another instance's ping
		}
		if n, err := strconv.ParseInt(num, 10, 64); err == nil {
			p.lst.mu.Lock()
			p.lst.ackSeq = max(p.lst.ackSeq, n)
			p.lst.stuck = false
			p.lst.mu.Unlock()
		}
	default:
		p.log.Debug("unknown notification", "kind", kind, "bytes", len(n.Extra))
	}
}

// offerNow hands an event to the Sink from the draining goroutine when
// nothing is queued before it and nobody is delivering, without waiting
// for either: the notification then wakes no other goroutine of the store
// (each wake-up costs more than the rest of a notification's handling in
// the store). It reports whether it did; if not, the event is queued.
func (p *Postgres) offerNow(e hub.Event) bool {
	if p.q.sink == nil || !p.q.deliverMu.TryLock() {
		return false
	}
	defer p.q.deliverMu.Unlock()
	if !p.q.goneMu.TryLock() { // a deletion is being handed over: it goes first
		return false
	}
	defer p.q.goneMu.Unlock()
	p.q.mu.Lock()
	idle := len(p.q.offers) == 0 && len(p.q.wake) == 0 && len(p.q.gone) == 0 && !p.q.wakeAll
	p.q.mu.Unlock()
	if !idle {
		return false
	}
	p.q.sink.Offer(e)
	return true
}

func (p *Postgres) wakeLoop(run context.Context, sink Sink) {
	defer p.wg.Done()
	for {
		select {
		case <-run.Done():
			return
		case <-p.q.wakeSig:
		}
		p.deliverQueued(sink)
	}
}

// deliverQueued hands what the doorbell queues hold to the sink.
func (p *Postgres) deliverQueued(sink Sink) {
	p.q.deliverMu.Lock()
	defer p.q.deliverMu.Unlock()
	// Deleted users first, taken with the events: an event notified
	// after a deletion never reaches the deleted user.
	p.q.goneMu.Lock()
	p.q.mu.Lock()
	gone, all, set, offers := p.q.gone, p.q.wakeAll, p.q.wake, p.q.offers
	p.q.gone = nil
	p.q.wakeAll = false
	p.q.wake = make(map[string]struct{})
	p.q.offers = nil
	p.q.mu.Unlock()
	for _, u := range gone {
		sink.UserGone(u)
	}
	p.q.goneMu.Unlock()
	if all {
		sink.WakeAll() // covers every project of set and offers too
		return
	}
	for _, e := range offers {
		sink.Offer(e)
	}
	for id := range set {
		sink.Wake(id)
	}
}

func (p *Postgres) revokeLoop(run context.Context, sink Sink) {
	defer p.wg.Done()
	for {
		select {
		case <-run.Done():
			return
		case <-p.q.revokeSig:
		}
		for run.Err() == nil {
			r, ok := p.popRevoke()
			if !ok {
				break
			}
			p.checkRevocation(run, sink, r)
		}
	}
}

// checkRevocation re-checks a user's access after a change that may have
// removed it, and revokes only when it is really gone: the user may still
// hold another role row or be the project's facilitator.
func (p *Postgres) checkRevocation(run context.Context, sink Sink, r revocation) {
	ctx, cancel := context.WithTimeout(run, 10*time.Second)
	_, err := p.Role(ctx, &hub.User{ID: r.user}, r.project)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, hub.ErrAccessDenied):
		// A deleted user's d: follows the r: of its cascaded rows (foreign
		// keys' triggers fire first) and was heard while the access was
		// checked: the user is closed rather than told it left.
		p.flushGone(sink)
		sink.Revoke(r.project, r.user)
	case run.Err() != nil:
	case r.attempt < 5:
		p.log.Warn("re-checking access failed; retrying", "project", r.project, "user", r.user, "err", err)
		r.attempt++
		time.AfterFunc(time.Duration(r.attempt)*time.Second, func() { p.requestRevokeCheck(r) })
	default:
		p.log.Error("re-checking access failed; giving up", "project", r.project, "user", r.user, "err", err)
	}
}

func (p *Postgres) ephemeralLoop(run context.Context, sink Sink) {
	defer p.wg.Done()
	for {
		select {
		case <-run.Done():
			return
		case payload := <-p.q.ephemeral:
			p.deliverEphemeral(run, sink, payload)
		}
	}
}

func (p *Postgres) deliverEphemeral(run context.Context, sink Sink, payload string) {
	kind, rest, _ := strings.Cut(payload, ":")
	var raw []byte
	if kind == "x" {
		raw = []byte(rest)
	} else {
		id, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			p.log.Warn("bad stored ephemeral message id", "id", rest)
			return
		}
		ctx, cancel := context.WithTimeout(run, 5*time.Second)
		err = p.db.GetContext(ctx, &raw, `SELECT payload::text FROM push_ephemeral WHERE id = $1`, id)
		cancel()
		if errors.Is(err, sql.ErrNoRows) {
			p.log.Warn("stored ephemeral message already expired", "id", id)
			return
		}
		if err != nil {
			if run.Err() == nil {
				p.log.Warn("reading stored ephemeral message failed", "id", id, "err", err)
			}
			return
		}
	}
	var e hub.Ephemeral
	if err := json.Unmarshal(raw, &e); err != nil {
		p.log.Warn("bad ephemeral message", "err", err, "bytes", len(raw))
		return
	}
	p.flushGone(sink) // a user deleted before this message gets nothing
	sink.DeliverEphemeral(e)
}

// userCheckBatch bounds the user ids of one check query.
const userCheckBatch = 1000

// userCheckLoop checks that the connected users still have a users row,
// every UserCheckInterval and whenever notifications may have been lost (a
// listener reconnect): a deletion's notification is the fast way, this is
// the sure one.
func (p *Postgres) userCheckLoop(run context.Context, sink Sink) {
	defer p.wg.Done()
	every := time.NewTicker(p.opts.UserCheckInterval)
	defer every.Stop()
	for run.Err() == nil {
		select {
		case <-every.C:
			p.checkUsers(run, sink)
		case <-p.q.checkUsers:
			p.checkUsers(run, sink)
		case <-run.Done():
		}
	}
}

// checkUsers closes the connections of every connected user without a
// users row, userCheckBatch ids per query.
func (p *Postgres) checkUsers(run context.Context, sink Sink) {
	ids := sink.UserIDs()
	for len(ids) > 0 && run.Err() == nil {
		batch := ids[:min(len(ids), userCheckBatch)]
		ids = ids[len(batch):]
		var found []string
		ctx, cancel := context.WithTimeout(run, 10*time.Second)
		err := p.db.SelectContext(ctx, &found, `SELECT id FROM users WHERE id = ANY($1)`, pq.Array(batch))
		cancel()
		if err != nil {
			if run.Err() == nil {
				p.log.Warn("checking that connected users exist failed", "err", err)
			}
			return
		}
		exists := make(map[string]bool, len(found))
		for _, id := range found {
			exists[id] = true
		}
		for _, id := range batch {
			if !exists[id] {
				sink.UserGone(id)
			}
		}
	}
}

// stuckAfter is how long a ping may stay unanswered.
func (p *Postgres) stuckAfter() time.Duration {
	return max(3*p.opts.HealthInterval, time.Second)
}

// healthLoop pings the instance itself through the database every
// HealthInterval and replaces the listener when a ping does not come back.
// It owns the listener from Start on and closes it when run ends.
func (p *Postgres) healthLoop(run context.Context) {
	defer p.wg.Done()
	defer p.closeListener()
	t := time.NewTicker(p.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-run.Done():
			return
		case <-t.C:
		}
		if p.checkStuck() {
			p.log.Warn("listener stuck: its self-check notification did not come back; reconnecting",
				"after", p.stuckAfter())
			p.lst.counts.replaced.Add(1)
			p.closeListener()
			p.openListener(run)
			continue
		}
		p.sendPing(run)
	}
}

// checkStuck forgets answered pings and reports whether the oldest
// unanswered one is overdue, marking the listener stuck.
func (p *Postgres) checkStuck() bool {
	s := &p.lst
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.pending) && s.pending[i].n <= s.ackSeq {
		i++
	}
	s.pending = s.pending[i:]
	if s.connected && len(s.pending) > 0 && time.Since(s.pending[0].at) > p.stuckAfter() {
		s.stuck = true
		return true
	}
	return false
}

func (p *Postgres) sendPing(run context.Context) {
	s := &p.lst
	s.mu.Lock()
	if !s.connected {
		s.mu.Unlock()
		return
	}
	s.pingSeq++
	n := s.pingSeq
	s.mu.Unlock()
	at := time.Now()
	ctx, cancel := context.WithTimeout(run, p.opts.HealthInterval)
	_, err := p.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, fmt.Sprintf("p:%s:%d", p.instance, n))
	cancel()
	if err != nil {
		// The database is unreachable: Healthy's ping says so; the
		// listener is not to blame.
		if run.Err() == nil {
			p.log.Debug("self-check ping failed", "err", err)
		}
		return
	}
	s.mu.Lock()
	s.pending = append(s.pending, sentPing{n: n, at: at})
	s.mu.Unlock()
}

func (p *Postgres) listenerHealth() error {
	s := &p.lst
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.gen == 0:
		return errors.New("listener not started")
	case !s.connected:
		return errors.New("listener disconnected")
	case s.stuck:
		return errors.New("listener stuck: notifications do not arrive")
	}
	for _, sp := range s.pending {
		if sp.n > s.ackSeq {
			if time.Since(sp.at) > p.stuckAfter() {
				return errors.New("listener stuck: notifications do not arrive")
			}
			break
		}
	}
	return nil
}
