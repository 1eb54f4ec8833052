// Package store owns where events live: Postgres (events stored by triggers,
// LISTEN/NOTIFY as the doorbell) or, in embedded mode, memory. It decides
// project access and carries ephemeral messages between instances. It knows
// nothing of transports.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/saga-family/sagapush/hub"
)

// Store is the event store the service runs on.
type Store interface {
	hub.Source
	hub.Access
	hub.Relay
	// Publish stores a domain event and returns its seq; it reaches the hub
	// through the doorbell like any trigger event.
	Publish(ctx context.Context, projectID, name string, data json.RawMessage) (int64, error)
	// LookupUser tells whether a user id may connect, and the user's name
	// when the store knows it.
	LookupUser(ctx context.Context, userID string) (name string, ok bool, err error)
	// PutTicket and TakeTicket keep one-time connect tickets by hash
	// (session.TicketStore): TakeTicket is the one place that spends a
	// ticket, once, whichever instance asks.
	PutTicket(ctx context.Context, hash, claims []byte, ttl time.Duration, notAfter time.Time) (time.Time, error)
	TakeTicket(ctx context.Context, hash []byte) (claims []byte, ok bool, err error)
	// Healthy returns nil when the store and its notification channel work.
	Healthy(ctx context.Context) error
	// Mode is "embedded" or "postgres".
	Mode() string
	// Start begins handing doorbells, revocations and ephemeral messages to
	// sink, until ctx ends.
	Start(ctx context.Context, sink Sink) error
	Close() error
}

// Sink receives what the store learns. *hub.Hub is one.
type Sink interface {
	Wake(projectID string)
	Offer(e hub.Event) // a wake with the event in hand, in seq order per project
	WakeAll()
	Revoke(projectID, userID string)
	DeliverEphemeral(e hub.Ephemeral)
	// UserGone closes the connections of a user whose row was deleted.
	UserGone(userID string)
	// UserIDs lists the users connected here (service tokens aside), whose
	// rows the store checks when it may have missed a deletion.
	UserIDs() []string
}

// ErrUnknownEvent is returned by Publish for a name outside
// protocol.DomainEvents.
var ErrUnknownEvent = errors.New("unknown event")
