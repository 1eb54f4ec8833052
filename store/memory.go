package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Memory is the embedded mode's store: events live in memory with a bounded
// history per project, and access comes from the token's projects claim.
type Memory struct {
	history int

	mu       sync.Mutex
	projects map[string]*memProject
	sink     Sink

	tickets memTickets
}

type memProject struct {
	seq    int64
	events []hub.Event // the last events, oldest first, at most history
}

// NewMemory returns an in-memory store keeping history events per project.
func NewMemory(history int) *Memory {
	if history <= 0 {
		history = 10000
	}
	return &Memory{history: history, projects: make(map[string]*memProject)}
}

func (m *Memory) Mode() string { return "embedded" }

func (m *Memory) Start(ctx context.Context, sink Sink) error {
	m.mu.Lock()
	m.sink = sink
	m.mu.Unlock()
	return nil
}

func (m *Memory) Close() error { return nil }

func (m *Memory) Healthy(context.Context) error { return nil }

// LookupUser always finds the user, without a name: without a database the token is the only
// authority on users.
func (m *Memory) LookupUser(context.Context, string) (string, bool, error) { return "", true, nil }

// Role grants access to the projects listed in the token's projects claim.
func (m *Memory) Role(_ context.Context, u *hub.User, projectID string) (string, error) {
	if slices.Contains(u.Projects, projectID) {
		return "member", nil
	}
	return "", fmt.Errorf("%w: %s", hub.ErrAccessDenied, projectID)
}

// Roles is Role for several projects at once (hub.RolesAccess).
func (m *Memory) Roles(_ context.Context, u *hub.User, projectIDs []string) (map[string]string, error) {
	roles := make(map[string]string, len(projectIDs))
	for _, p := range projectIDs {
		if slices.Contains(u.Projects, p) {
			roles[p] = "member"
		}
	}
	return roles, nil
}

func (m *Memory) Publish(_ context.Context, projectID, name string, data json.RawMessage) (int64, error) {
	if !protocol.DomainEvents[name] {
		return 0, fmt.Errorf("%w: %q", ErrUnknownEvent, name)
	}
	m.mu.Lock()
	p := m.projects[projectID]
	if p == nil {
		p = &memProject{}
		m.projects[projectID] = p
	}
	p.seq++
	p.events = append(p.events, hub.Event{ProjectID: projectID, Seq: p.seq, Name: name, Time: time.Now(), Data: data})
	if len(p.events) > m.history {
		// Drop the oldest half at once so trimming stays amortised O(1).
		p.events = slices.Clone(p.events[len(p.events)-m.history/2:])
	}
	seq, sink := p.seq, m.sink
	m.mu.Unlock()
	if sink != nil {
		sink.Wake(projectID)
	}
	return seq, nil
}

func (m *Memory) Head(_ context.Context, projectID string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.projects[projectID]; p != nil {
		return p.seq, nil
	}
	return 0, nil
}

func (m *Memory) After(_ context.Context, projectID string, after int64, limit int) ([]hub.Event, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.projects[projectID]
	if p == nil || after >= p.seq {
		return nil, true, nil
	}
	first := p.events[0].Seq
	if after+1 < first {
		return nil, false, nil
	}
	evs := p.events[after+1-first:]
	if limit > 0 && len(evs) > limit {
		evs = evs[:limit]
	}
	return slices.Clone(evs), true, nil
}

// PublishEphemeral delivers at once: there is no other instance.
func (m *Memory) PublishEphemeral(_ context.Context, e hub.Ephemeral) error {
	m.mu.Lock()
	sink := m.sink
	m.mu.Unlock()
	if sink != nil {
		sink.DeliverEphemeral(e)
	}
	return nil
}
