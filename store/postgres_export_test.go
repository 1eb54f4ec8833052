package store

// SetDropNotifications makes the listener ignore everything it hears, as a
// LISTEN connection that looks alive but is stuck would.
func (p *Postgres) SetDropNotifications(drop bool) { p.dropNotify.Store(drop) }

// SetTicketLimit lowers the embedded store's ticket bound (maxMemTickets).
func (m *Memory) SetTicketLimit(n int) {
	m.tickets.mu.Lock()
	m.tickets.limit = n
	m.tickets.mu.Unlock()
}
