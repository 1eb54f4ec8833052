package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/store"
)

// storeMetrics exports what the Postgres store counts and the check /readyz
// makes: the store itself knows nothing of Prometheus.
type storeMetrics struct {
	stats   func() store.ListenerStats
	healthy func(context.Context) error

	reconnects, notifications, up *prometheus.Desc
}

func newStoreMetrics(stats func() store.ListenerStats, healthy func(context.Context) error) *storeMetrics {
	return &storeMetrics{
		stats: stats, healthy: healthy,
		reconnects: prometheus.NewDesc("sagapush_listener_reconnects_total",
			"Reconnections of the LISTEN connection: lost (the connection dropped and was made again) or stuck (its self-check notification did not come back, so it was replaced).",
			[]string{"reason"}, nil),
		notifications: prometheus.NewDesc("sagapush_notifications_total",
			"Notifications the LISTEN connection heard, by kind: event (carrying its event), event_pointer (too big: the rows are read), access, ephemeral, user_deleted, presence, self_check (every instance's), other.",
			[]string{"kind"}, nil),
		up: prometheus.NewDesc("sagapush_database_up",
			"1 when the database answers and the LISTEN connection hears its own self-check notifications (what /readyz checks, made at each scrape within 2 s), else 0.",
			nil, nil),
	}
}

func (m *storeMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.reconnects
	ch <- m.notifications
	ch <- m.up
}

func (m *storeMetrics) Collect(ch chan<- prometheus.Metric) {
	st := m.stats()
	ch <- prometheus.MustNewConstMetric(m.reconnects, prometheus.CounterValue, float64(st.Reconnects), "lost")
	ch <- prometheus.MustNewConstMetric(m.reconnects, prometheus.CounterValue, float64(st.Replaced), "stuck")
	for kind, n := range st.Notifications {
		ch <- prometheus.MustNewConstMetric(m.notifications, prometheus.CounterValue, float64(n), kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	up := 0.0
	if m.healthy(ctx) == nil {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, up)
}
