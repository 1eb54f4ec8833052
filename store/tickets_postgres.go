package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// ticketPruneEvery is how often an instance deletes expired tickets, on
// the way out of a PutTicket: the table holds about this much of
// expired rows, and a busy instance runs the DELETE rarely.
const ticketPruneEvery = time.Minute

// PutTicket implements session.TicketStore. The expiry comes from the
// database's clock, the one TakeTicket compares with on every instance, so
// clock skew between instances cannot stretch or cut a ticket's life.
func (p *Postgres) PutTicket(ctx context.Context, hash, claims []byte, ttl time.Duration, notAfter time.Time) (time.Time, error) {
	var bound any // NULL: LEAST ignores it
	if !notAfter.IsZero() {
		bound = notAfter
	}
	var exp time.Time
	err := p.db.GetContext(ctx, &exp, `
		INSERT INTO push_tickets (hash, claims, expires_at)
		VALUES ($1, $2::jsonb, LEAST(now() + $3::double precision * interval '1 millisecond', $4::timestamptz))
		RETURNING expires_at`, hash, string(claims), ttl.Milliseconds(), bound)
	if err != nil {
		return time.Time{}, err
	}
	p.sometimes(ctx, &p.lastTicketPrune, ticketPruneEvery, "expired tickets", p.pruneTickets)
	return exp, nil
}

// TakeTicket implements session.TicketStore with one statement: the DELETE
// locks the row, so of two instances taking one ticket the second waits
// for the first to commit, then finds no row.
func (p *Postgres) TakeTicket(ctx context.Context, hash []byte) ([]byte, bool, error) {
	var claims []byte
	err := p.db.GetContext(ctx, &claims,
		`DELETE FROM push_tickets WHERE hash = $1 AND expires_at > now() RETURNING claims::text`, hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return claims, true, nil
}

// pruneTickets deletes the expired tickets, spent or not.
func (p *Postgres) pruneTickets(ctx context.Context) error {
	_, err := p.db.ExecContext(ctx, `DELETE FROM push_tickets WHERE expires_at <= now()`)
	return err
}
