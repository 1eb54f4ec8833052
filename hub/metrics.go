package hub

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/internal/protocol"
)

// Metrics are the hub's Prometheus collectors. Transports add to them too.
type Metrics struct {
	connections  *prometheus.GaugeVec
	joins        prometheus.Counter
	rateLimited  prometheus.Counter
	slowClosed   prometheus.Counter
	storeReplays prometheus.Counter
	// commitToClient observes, once per event a room fans out, the time
	// from the event's creation (its stored created_at: the trigger's or
	// the publish's clock, just before the commit) to the end of its
	// fan-out here (every member's queue has it and its transport was
	// woken). fanoutLatency observes, per event too, the fan-out alone:
	// from the room's pump having the event in hand (offered by the store
	// or read from it) to the same end, on this instance's clock only.
	commitToClient prometheus.Histogram
	fanoutLatency  prometheus.Histogram
	// disconnects counts the connections that left the hub, by transport
	// and by the close the server decided (closeReason), "client" when it
	// decided none.
	disconnects *prometheus.CounterVec

	// MessagesIn counts client frames by transport and event.
	MessagesIn *prometheus.CounterVec
	// MessagesOut counts frames written to clients by transport.
	MessagesOut *prometheus.CounterVec
	// Dropped counts frames that were queued for a connection that closed
	// (slow, gone): its client resumes from its last seq.
	Dropped *prometheus.CounterVec
	// Handshakes counts upgrade and stream attempts by transport and outcome.
	Handshakes *prometheus.CounterVec
}

// Disconnect reasons: the label of sagapush_disconnects_total, one per
// close code the hub decides, so the set is bounded whatever a client does.
const (
	reasonClient          = "client" // the server decided no close: the client left, or its transport lost it
	reasonTooSlow         = "too_slow"
	reasonUnauthenticated = "unauthenticated"
	reasonAbuse           = "abuse"
	reasonShutdown        = "shutdown"
	reasonOther           = "other"
)

// disconnectReasons are every value of the reason label, pre-initialised.
var disconnectReasons = []string{reasonClient, reasonTooSlow, reasonUnauthenticated, reasonAbuse, reasonShutdown, reasonOther}

// closeReason is the reason label of a close code the server decided.
func closeReason(code int) string {
	switch code {
	case 0:
		return reasonClient
	case protocol.CloseTooSlow:
		return reasonTooSlow
	case protocol.CloseUnauthenticated:
		return reasonUnauthenticated
	case protocol.CloseTooMany:
		return reasonAbuse
	case protocol.CloseGoingAway:
		return reasonShutdown
	}
	return reasonOther
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered, for tests that build many hubs). The series of both
// transports are created at once, so that they are exported, and rate()
// counts from zero, before the first connection.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sagapush_connections", Help: "Open client connections."}, []string{"transport"}),
		joins:        prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_joins_total", Help: "Successful project joins."}),
		rateLimited:  prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_rate_limited_total", Help: "Client frames refused by the rate limit."}),
		slowClosed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_slow_closed_total", Help: "Connections closed with 4001 because their queue was full."}),
		storeReplays: prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_store_replays_total", Help: "Joins whose replay was read from the store."}),
		MessagesIn:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_messages_in_total", Help: "Client frames received."}, []string{"transport", "event"}),
		MessagesOut:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_messages_out_total", Help: "Messages written to clients."}, []string{"transport"}),
		Dropped:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_messages_dropped_total", Help: "Messages queued for a connection that closed before they were written (its client resumes from its last seq)."}, []string{"transport"}),
		commitToClient: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sagapush_commit_to_client_seconds",
			Help: "Per event fanned out here: from its creation (its stored created_at, taken by the trigger or the publish just before the commit, on the database's clock in Postgres mode) " +
				"to the end of its fan-out on this instance (queued to every member of the room and their transports woken). Replays on join are not counted.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		fanoutLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sagapush_fanout_latency_seconds",
			Help: "Per event fanned out here: from the room's pump having it (offered by the store or read from it) " +
				"to the end of its fan-out (queued to every member of the room and their transports woken).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sagapush_disconnects_total",
			Help: "Connections that left sagapush_connections, by the close the server decided: too_slow (4001), unauthenticated (4401), abuse (4429), shutdown (1001), other; client when it decided none.",
		}, []string{"transport", "reason"}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_handshakes_total", Help: "Connection attempts by outcome."}, []string{"transport", "outcome"}),
	}
	for _, t := range []string{protocol.WebSocket, protocol.SSE} {
		m.connections.WithLabelValues(t)
		m.MessagesOut.WithLabelValues(t)
		m.Dropped.WithLabelValues(t)
		for _, r := range disconnectReasons {
			m.disconnects.WithLabelValues(t, r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.joins, m.rateLimited, m.slowClosed, m.storeReplays,
			m.MessagesIn, m.MessagesOut, m.Dropped, m.commitToClient, m.fanoutLatency, m.disconnects, m.Handshakes)
	}
	return m
}

// Metrics returns the hub's collectors.
func (h *Hub) Metrics() *Metrics { return h.metrics }

// Stats is a snapshot for the stats endpoint.
type Stats struct {
	Connections int
	Users       int
	Projects    []ProjectStat // busiest first
	Transports  map[string]int
	RateWindow  int64 // ms
	RateMax     int
}

// ProjectStat counts a room's local connections.
type ProjectStat struct {
	ProjectID   string `json:"projectId"`
	Connections int    `json:"connectionCount"`
}

// Stats returns a snapshot of connections, users and rooms.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	s := Stats{
		Connections: len(h.conns),
		Users:       len(h.users),
		Transports:  make(map[string]int, len(h.perTrans)),
		RateWindow:  h.opts.RateWindow.Milliseconds(),
		RateMax:     h.opts.RateMaxEvents,
	}
	for t, n := range h.perTrans {
		s.Transports[t] = n
	}
	rooms := make([]*room, 0, len(h.rooms))
	for _, r := range h.rooms {
		rooms = append(rooms, r)
	}
	h.mu.RUnlock()
	for _, r := range rooms {
		r.mu.Lock()
		s.Projects = append(s.Projects, ProjectStat{ProjectID: r.id, Connections: len(r.members)})
		r.mu.Unlock()
	}
	sort.Slice(s.Projects, func(i, j int) bool { return s.Projects[i].Connections > s.Projects[j].Connections })
	return s
}
