package protocol

import (
	"errors"
	"slices"
	"strconv"
	"strings"
)

// Cursor is what an SSE event id carries: the last seq delivered per project
// of the stream. Clients treat it as opaque; it reads "P1:17,P2:4", the same
// form as the since parameter.
type Cursor map[string]int64

// MaxProjects is the most projects one SSE request may list, and one
// connection may join.
const MaxProjects = 200

// ParseCursor reads a cursor or a since parameter: at most MaxProjects
// entries.
func ParseCursor(s string) (Cursor, error) {
	c := Cursor{}
	if strings.TrimSpace(s) == "" {
		return c, nil
	}
	if strings.Count(s, ",") >= MaxProjects {
		return nil, errors.New("more than 200 projects")
	}
	for _, part := range strings.Split(s, ",") {
		id, seq, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || !ValidID(id) {
			return nil, errors.New("expected P1:17,P2:4")
		}
		n, err := strconv.ParseInt(seq, 10, 64)
		if err != nil || n < 0 {
			return nil, errors.New("a seq must be a non-negative integer")
		}
		c[id] = n
	}
	return c, nil
}

// ParseProjects reads the projects parameter of /sse: a comma list of at
// most MaxProjects ids, duplicates dropped, in the order given.
func ParseProjects(s string) ([]string, error) {
	if strings.Count(s, ",") >= MaxProjects {
		return nil, errors.New("at most 200 projects in one request")
	}
	var projects []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" || slices.Contains(projects, p) {
			continue
		}
		if !ValidID(p) {
			return nil, errors.New("invalid project id in projects")
		}
		projects = append(projects, p)
	}
	if len(projects) == 0 {
		return nil, errors.New("projects is required: /sse?projects=P1,P2")
	}
	return projects, nil
}

// Position is a stream's cursor as it advances: the last seq written per
// project, projects sorted. It is kept as two slices, not a map, since a
// stream holds it for its whole life and appends it to every event id.
type Position struct {
	projects []string
	seqs     []int64
}

// NewPosition starts a position at the given seq per project.
func NewPosition(seqs map[string]int64) Position {
	p := Position{projects: make([]string, 0, len(seqs)), seqs: make([]int64, len(seqs))}
	for id := range seqs {
		p.projects = append(p.projects, id)
	}
	slices.Sort(p.projects)
	for i, id := range p.projects {
		p.seqs[i] = seqs[id]
	}
	return p
}

// Advance records seq as the project's last; false for a project the
// position does not hold.
func (p *Position) Advance(projectID string, seq int64) bool {
	for i, id := range p.projects {
		if id == projectID {
			p.seqs[i] = seq
			return true
		}
	}
	return false
}

// Append appends the cursor in the form ParseCursor reads.
func (p *Position) Append(b []byte) []byte {
	for i, id := range p.projects {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, id...)
		b = append(b, ':')
		b = strconv.AppendInt(b, p.seqs[i], 10)
	}
	return b
}
