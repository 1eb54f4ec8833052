package hub

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the hub's Prometheus collectors. Transports add to them too.
type Metrics struct {
	connections  *prometheus.GaugeVec
	joins        prometheus.Counter
	rateLimited  prometheus.Counter
	slowClosed   prometheus.Counter
	storeReplays prometheus.Counter
	// fanoutLatency observes, per event, its creation (the trigger or the
	// publish, just before commit) to its fan-out to the room's queues.
	fanoutLatency prometheus.Histogram

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

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered, for tests that build many hubs).
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
		fanoutLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sagapush_fanout_latency_seconds",
			Help:    "Time from an event's creation (trigger or publish, before its commit) to its fan-out into the room's connection queues.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_handshakes_total", Help: "Connection attempts by outcome."}, []string{"transport", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.joins, m.rateLimited, m.slowClosed, m.storeReplays,
			m.MessagesIn, m.MessagesOut, m.Dropped, m.fanoutLatency, m.Handshakes)
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
