package hub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/store"
)

// sample reads one series of reg: a counter's or gauge's value, or a
// histogram's sum, and its count of observations. labels are name=value
// pairs the series must carry; ok is false when no series matches.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels ...string) (value float64, count uint64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, l := range labels {
				k, v, _ := strings.Cut(l, "=")
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetHistogram() != nil:
				return m.GetHistogram().GetSampleSum(), m.GetHistogram().GetSampleCount(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), 0, true
			default:
				return m.GetGauge().GetValue(), 0, true
			}
		}
	}
	return 0, 0, false
}

// agedSource hands out the store's events as created two seconds earlier.
type agedSource struct{ hub.Source }

const age = 2 * time.Second

func (s agedSource) After(ctx context.Context, projectID string, after int64, limit int) ([]hub.Event, bool, error) {
	evs, complete, err := s.Source.After(ctx, projectID, after, limit)
	for i := range evs {
		evs[i].Time = evs[i].Time.Add(-age)
	}
	return evs, complete, err
}

// Commit-to-client runs from the event's creation, fan-out from the pump
// having it; each is observed once per event, however many members get it.
func TestLatencyObservedOncePerEvent(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := store.NewMemory(0)
	f := &fixture{hub: hub.New(hub.Options{Source: agedSource{st}, Access: st, Relay: st, Metrics: hub.NewMetrics(reg)}), store: st}
	t.Cleanup(f.hub.Close)
	st.Start(context.Background(), f.hub)

	var members []*outlet
	for i := range 3 {
		o := f.connect(t, fmt.Sprint("u", i), "p")
		f.join(t, o, "p", nil)
		members = append(members, o)
	}
	f.publish(t, "p", 5)
	for _, o := range members {
		o.waitFor(t, "5 events", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 5 })
	}
	// The observations follow the wakes: wait for them, bounded.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, n, _ := sample(t, reg, "sagapush_commit_to_client_seconds")
		_, m, _ := sample(t, reg, "sagapush_fanout_latency_seconds")
		if n == 5 && m == 5 {
			break
		}
		if n > 5 || m > 5 || time.Now().After(deadline) {
			t.Fatalf("%d commit-to-client and %d fan-out observations for 5 events to 3 members, want 5 each", n, m)
		}
		time.Sleep(5 * time.Millisecond)
	}
	commit, _, _ := sample(t, reg, "sagapush_commit_to_client_seconds")
	fanout, _, _ := sample(t, reg, "sagapush_fanout_latency_seconds")
	if commit < 5*age.Seconds() {
		t.Errorf("commit-to-client sum %.3f s, want at least 5 x %v from the events' creation", commit, age)
	}
	if fanout >= age.Seconds() {
		t.Errorf("fan-out sum %.3f s: it must not count the time before the pump had the events", fanout)
	}
}

// Every connection that leaves the hub counts once, with the close the
// server decided for it; the series exist before the first connection.
func TestDisconnectReasons(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, hub.Options{Metrics: hub.NewMetrics(reg), QueueLimit: 100, MaxReplay: 5}, 0)
	for _, tr := range []string{protocol.WebSocket, protocol.SSE} {
		for _, r := range []string{"client", "too_slow", "unauthenticated", "abuse", "shutdown", "other"} {
			if _, _, ok := sample(t, reg, "sagapush_disconnects_total", "transport="+tr, "reason="+r); !ok {
				t.Errorf("no disconnects series {transport=%s, reason=%s} before any connection", tr, r)
			}
		}
		if _, _, ok := sample(t, reg, "sagapush_connections", "transport="+tr); !ok {
			t.Errorf("no connections series for %s before any connection", tr)
		}
	}

	gone := f.connect(t, "gone", "p")
	left := f.connect(t, "left", "p")
	slow := f.connect(t, "slow", "p")
	abuser := f.connect(t, "abuser", "p")
	rest := f.connect(t, "rest", "p")
	f.join(t, slow, "p", nil)

	f.hub.Disconnect(left.conn)
	f.hub.Disconnect(left.conn) // twice: counted once

	f.hub.UserGone("gone")
	f.hub.Disconnect(gone.conn)

	abuser.conn.CloseAfterFlush(protocol.CloseTooMany, "sustained abuse")
	abuser.conn.CloseAfterFlush(protocol.CloseGoingAway, "server shutting down") // the first close decided counts
	f.hub.Disconnect(abuser.conn)

	f.publish(t, "p", 120) // slow never reads: 4001 past 100 frames
	deadline := time.Now().Add(5 * time.Second)
	for {
		slow.mu.Lock()
		code := slow.aborted
		slow.mu.Unlock()
		if code == protocol.CloseTooSlow {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow connection was not closed with 4001 (code %d)", code)
		}
		select {
		case <-slow.notify:
		case <-time.After(20 * time.Millisecond):
		}
	}
	f.hub.Disconnect(slow.conn)

	f.hub.Shutdown(time.Second)
	f.hub.Disconnect(rest.conn)

	for reason, want := range map[string]float64{"client": 1, "unauthenticated": 1, "abuse": 1, "too_slow": 1, "shutdown": 1, "other": 0} {
		if got, _, _ := sample(t, reg, "sagapush_disconnects_total", "transport=test", "reason="+reason); got != want {
			t.Errorf("disconnects{reason=%s} = %v, want %v", reason, got, want)
		}
	}
	if got, _, _ := sample(t, reg, "sagapush_connections", "transport=test"); got != 0 {
		t.Errorf("connections{test} = %v after every disconnect, want 0", got)
	}
}
