package hub

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/saga-family/sagapush/internal/protocol"
)

// Event is one stored domain event of a project.
type Event struct {
	ProjectID string
	Seq       int64
	Name      string
	Time      time.Time
	Data      json.RawMessage
}

// Frame is one encoded server message. A frame built for fan-out is shared by
// every recipient: it is encoded once and never modified after it is queued.
type Frame struct {
	Name      string // the message's "event"
	ProjectID string // set on project-bound messages
	Seq       int64  // > 0 on domain events only
	JSON      []byte // the whole message, as a WebSocket text frame carries it

	created time.Time // the event's creation (domain events), for metrics

	// CloseCode > 0 marks a control frame: close the connection with this
	// code once every frame before it is written. JSON is then empty.
	CloseCode   int
	CloseReason string

	wire [EncodingSlots]atomic.Pointer[[]byte] // see Encoded
}

// EncodingSlots is how many wire formats a frame can cache (Encoded).
const EncodingSlots = 2

// Encoded returns the frame in a transport's wire format (slot tells formats
// apart), made by encode from JSON on first use and shared by every
// connection after that: a fan-out writes the same bytes to thousands of
// sockets. encode must always give the same bytes for the same JSON.
func (f *Frame) Encoded(slot int, encode func(json []byte) []byte) []byte {
	if p := f.wire[slot].Load(); p != nil {
		return *p
	}
	b := encode(f.JSON)
	if !f.wire[slot].CompareAndSwap(nil, &b) {
		return *f.wire[slot].Load()
	}
	return b
}

// EventFrame encodes a domain event as clients receive it, once for every
// recipient.
func EventFrame(e Event) *Frame {
	b := make([]byte, 0, protocol.EventSize(e.Name, e.ProjectID, e.Data))
	b = protocol.AppendEvent(b, e.Name, e.ProjectID, e.Seq, e.Time.UnixMilli(), e.Data)
	return &Frame{Name: e.Name, ProjectID: e.ProjectID, Seq: e.Seq, JSON: b, created: e.Time}
}

// Reply makes the frame of a message that is not a domain event
// (protocol.Message).
func Reply(name, projectID string, data any, ack json.RawMessage) *Frame {
	return &Frame{Name: name, ProjectID: projectID, JSON: protocol.Message(name, projectID, data, ack)}
}

// ErrorFrame makes an "error" message answering the frame with the given ack.
func ErrorFrame(e protocol.Error, ack json.RawMessage) *Frame {
	return Reply(protocol.ErrorEvent, "", e, ack)
}
