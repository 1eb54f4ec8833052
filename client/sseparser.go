package client

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"time"
)

// sseMessage is one dispatched message of an event stream.
type sseMessage struct {
	event string // "message" when the stream named none
	data  []byte // a fresh slice, owned by the receiver
	id    string // the last event id at dispatch ("" when none was ever set)
	retry time.Duration
}

// sseParser reads an event stream as the HTML standard says: lines end with
// CRLF, LF or CR; a leading BOM is skipped; ":" starts a comment; fields are
// event, data, id (ignored when it holds NUL) and retry (digits only); an
// empty line dispatches the message, unless its data is empty.
type sseParser struct {
	r       *bufio.Reader
	max     int
	line    []byte
	skipLF  bool // the previous line ended with CR: skip a LF that follows
	started bool
	lastID  string
	retry   time.Duration
	event   string
	data    []byte
}

var errLineTooLong = errors.New("client: event stream line too long")

func newSSEParser(r io.Reader, max int) *sseParser {
	return &sseParser{r: bufio.NewReaderSize(r, 8<<10), max: max}
}

// readLine returns the next line without its end. The slice is valid until
// the next call. An unterminated last line is dropped (io.EOF).
func (p *sseParser) readLine() ([]byte, error) {
	p.line = p.line[:0]
	for {
		n := p.r.Buffered()
		if n == 0 {
			if _, err := p.r.Peek(1); err != nil {
				return nil, err
			}
			n = p.r.Buffered()
		}
		buf, _ := p.r.Peek(n)
		if p.skipLF {
			p.skipLF = false
			if buf[0] == '\n' {
				p.r.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(buf, "\r\n")
		if i < 0 {
			if len(p.line)+n > p.max {
				return nil, errLineTooLong
			}
			p.line = append(p.line, buf...)
			p.r.Discard(n)
			continue
		}
		if len(p.line)+i > p.max {
			return nil, errLineTooLong
		}
		p.line = append(p.line, buf[:i]...)
		p.skipLF = buf[i] == '\r'
		p.r.Discard(i + 1)
		if !p.started {
			p.started = true
			p.line = bytes.TrimPrefix(p.line, []byte("\xEF\xBB\xBF"))
		}
		return p.line, nil
	}
}

// next returns the next dispatched message.
func (p *sseParser) next() (sseMessage, error) {
	for {
		line, err := p.readLine()
		if err != nil {
			return sseMessage{}, err
		}
		if len(line) == 0 { // dispatch
			if len(p.data) == 0 {
				p.event = ""
				continue
			}
			data := make([]byte, len(p.data)-1) // without the last LF
			copy(data, p.data)
			m := sseMessage{event: p.event, data: data, id: p.lastID, retry: p.retry}
			if m.event == "" {
				m.event = "message"
			}
			p.event, p.data = "", p.data[:0]
			return m, nil
		}
		if line[0] == ':' {
			continue // a comment (the server's heartbeat)
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			p.event = string(value)
		case "data":
			if len(p.data)+len(value) > p.max {
				return sseMessage{}, errLineTooLong
			}
			p.data = append(p.data, value...)
			p.data = append(p.data, '\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.lastID = string(value)
			}
		case "retry":
			if ms, ok := digits(value); ok {
				p.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// digits parses a non-empty string of ASCII digits.
func digits(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
