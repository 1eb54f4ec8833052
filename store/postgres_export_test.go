package store

// SetDropNotifications makes the listener ignore everything it hears, as a
// LISTEN connection that looks alive but is stuck would.
func (p *Postgres) SetDropNotifications(drop bool) { p.dropNotify.Store(drop) }
