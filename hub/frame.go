package hub

import (
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"
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

// EventFrame encodes a domain event as clients receive it:
// {"event","projectId","seq","ts","data"}.
func EventFrame(e Event) *Frame {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	b := make([]byte, 0, 96+len(e.Name)+len(e.ProjectID)+len(data))
	b = append(b, `{"event":`...)
	b = appendJSONString(b, e.Name)
	b = append(b, `,"projectId":`...)
	b = appendJSONString(b, e.ProjectID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, e.Seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.Time.UnixMilli(), 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	b = append(b, '}')
	return &Frame{Name: e.Name, ProjectID: e.ProjectID, Seq: e.Seq, JSON: b, created: e.Time}
}

// Reply encodes a message that is not a domain event: {"event","data","ack"?}
// plus, when projectID is set, a top-level "projectId".
func Reply(name, projectID string, data any, ack json.RawMessage) *Frame {
	msg := struct {
		Event     string          `json:"event"`
		ProjectID string          `json:"projectId,omitempty"`
		Data      any             `json:"data,omitempty"`
		Ack       json.RawMessage `json:"ack,omitempty"`
	}{name, projectID, data, ack}
	b, err := json.Marshal(msg)
	if err != nil {
		// Only programming errors get here: data is always a plain struct or map.
		b = []byte(`{"event":"error","data":{"code":"INTERNAL_ERROR","message":"encoding failed"}}`)
		name = "error"
	}
	return &Frame{Name: name, ProjectID: projectID, JSON: b}
}

// ErrorData is the data of an "error" message (PROTOCOL section 6).
type ErrorData struct {
	Code         string `json:"code"`
	Message      string `json:"message"`
	ProjectID    string `json:"projectId,omitempty"`
	RetryAfterMs int64  `json:"retryAfterMs,omitempty"`
}

// ErrorFrame encodes an "error" message answering the frame with the given ack.
func ErrorFrame(e ErrorData, ack json.RawMessage) *Frame {
	return Reply("error", "", e, ack)
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
