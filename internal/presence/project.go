package presence

// project is what the tracker knows of one project: one entry per user
// that is online (here or elsewhere), in its grace here, or whose row here
// is not deleted yet. A family has a handful of users, so the entries are a
// slice searched in order (a map per project would cost several times the
// memory); a project past indexAbove users gets an index as well.
type project struct {
	id string
	// watched: the project has a room here, whose members are told of
	// changes; the other instances' users are kept fresh only then.
	watched bool
	loaded  uint64 // ticket of the last remote read applied; 0: none
	online  int    // entries with online set
	users   []entry
	index   map[string]int32 // user -> position in users, past indexAbove
}

// entry is one user of a project.
type entry struct {
	user string
	// name is the name the user came online with (the connection that
	// made it online: docs/protocol.md, presence); this instance's row
	// carries it too.
	name string
	n    int32 // members here
	// db is the connection count this instance's row holds; -1: no row.
	db int32
	// remote counts connections on other instances as last read; -1: not
	// online on any other instance.
	remote int32
	// online: members here were told the user is online (or would have
	// been, for a project nobody watches).
	online bool
	// departure is the serial of the grace the user waits out here after
	// its last member left; 0 when none.
	departure uint64
}

// local reports whether the user counts here: members, or its grace.
func (e *entry) local() bool { return e.n > 0 || e.departure != 0 }

// idle reports whether the entry holds nothing any more.
func (e *entry) idle() bool { return !e.local() && e.remote < 0 && e.db < 0 && !e.online }

const indexAbove = 16

// find returns the user's entry, or nil.
func (p *project) find(user string) *entry {
	if p.index != nil {
		if i, ok := p.index[user]; ok {
			return &p.users[i]
		}
		return nil
	}
	for i := range p.users {
		if p.users[i].user == user {
			return &p.users[i]
		}
	}
	return nil
}

// add appends an entry for the user (who has none) and returns it. The
// pointer is good until the next add or remove.
func (p *project) add(user, name string) *entry {
	if len(p.users) == cap(p.users) && len(p.users) < indexAbove {
		// Grow by two, not double: a family has a handful of users.
		grown := make([]entry, len(p.users), len(p.users)+2)
		copy(grown, p.users)
		p.users = grown
	}
	p.users = append(p.users, entry{user: user, name: name, db: -1, remote: -1})
	i := len(p.users) - 1
	switch {
	case p.index != nil:
		p.index[user] = int32(i)
	case len(p.users) > indexAbove:
		p.index = make(map[string]int32, len(p.users))
		for j := range p.users {
			p.index[p.users[j].user] = int32(j)
		}
	}
	return &p.users[i]
}

// removeIdle drops the user's entry if it holds nothing any more.
func (p *project) removeIdle(user string) {
	e := p.find(user)
	if e == nil || !e.idle() {
		return
	}
	i := len(p.users) - 1
	if p.index != nil {
		j := p.index[user]
		delete(p.index, user)
		if int(j) != i {
			p.users[j] = p.users[i]
			p.index[p.users[j].user] = j
		}
	} else {
		*e = p.users[i]
	}
	p.users[i] = entry{}
	p.users = p.users[:i]
	if p.index != nil && len(p.users) <= indexAbove/2 {
		p.index = nil // back to scanning: a big project emptied
	}
	if len(p.users) == 0 {
		p.users = nil
	}
}
