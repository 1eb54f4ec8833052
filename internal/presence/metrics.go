package presence

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	users     prometheus.Gauge
	writes    prometheus.Counter
	rows      prometheus.Counter
	reads     prometheus.Counter
	announced *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		users:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "sagapush_presence_users", Help: "(project, user) pairs online on this instance, graces included."}),
		writes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_presence_db_writes_total", Help: "Presence writes to the database (one round trip each, lease renewals included)."}),
		rows:      prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_presence_db_rows_total", Help: "Presence rows this instance inserted, updated or deleted."}),
		reads:     prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_presence_db_reads_total", Help: "Presence reads of other instances' users."}),
		announced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagapush_presence_announcements_total", Help: "Presence changes announced to a room here."}, []string{"event"}),
	}
	if reg != nil {
		reg.MustRegister(m.users, m.writes, m.rows, m.reads, m.announced)
	}
	return m
}
