package protocol

import (
	"encoding/json"
	"strconv"
)

// Error is the data of an "error" message (section 6), and what a refusal
// carries inside the server until it is written.
type Error struct {
	Code         string `json:"code"`
	Message      string `json:"message"`
	ProjectID    string `json:"projectId,omitempty"`
	RetryAfterMs int64  `json:"retryAfterMs,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Joined is the data of joined_project.
type Joined struct {
	ProjectID string `json:"projectId"`
	Role      string `json:"role"`
	Seq       int64  `json:"seq"`
	Recovered *bool  `json:"recovered,omitempty"`
	// Online lists the project's online users at the join (section 11),
	// sorted by userId. It is absent when the project has more online
	// users than members are told of one by one (PRESENCE_MAX_USERS).
	Online []OnlineUser `json:"online,omitzero"`
}

// OnlineUser is one online user: an entry of joined_project.online and the
// data of user_online. UserName is null when the user's name is not known.
type OnlineUser struct {
	UserID   string  `json:"userId"`
	UserName *string `json:"userName"`
}

// OfflineUser is the data of user_offline.
type OfflineUser struct {
	UserID string `json:"userId"`
}

// PresenceUser is one entry of GET /api/projects/{id}/presence: Connections
// counts the user's joined connections on every instance (0 during the
// grace).
type PresenceUser struct {
	UserID      string  `json:"userId"`
	UserName    *string `json:"userName"`
	Connections int     `json:"connections"`
}

// NameOrNull is name for a JSON field that is null when the name is not
// known.
func NameOrNull(name string) *string {
	if name == "" {
		return nil
	}
	return &name
}

// Left is the data of left_project.
type Left struct {
	ProjectID string `json:"projectId"`
	Reason    string `json:"reason"`
}

// PongData is the data of pong.
type PongData struct {
	TS int64 `json:"ts"`
}

// AuthenticatedData is the data of authenticated; ExpiresAt is the token's
// exp in epoch ms, nil for a token without one.
type AuthenticatedData struct {
	UserID    string `json:"userId"`
	ExpiresAt *int64 `json:"expiresAt"`
}

// ShutdownData is the data of server_shutdown.
type ShutdownData struct {
	Message          string `json:"message"`
	ReconnectAfterMs int64  `json:"reconnectAfterMs"`
}

// TypingRelay is the data of a relayed typing_start or typing_stop;
// UserName is null when the sender's name is not known.
type TypingRelay struct {
	StoryID  string  `json:"storyId"`
	UserID   string  `json:"userId"`
	UserName *string `json:"userName"`
}

// Message encodes a message that is not a domain event:
// {"event","projectId"?,"data"?,"ack"?}. projectID is set on project-bound
// messages (typing); ack echoes the frame being answered.
func Message(name, projectID string, data any, ack json.RawMessage) []byte {
	msg := struct {
		Event     string          `json:"event"`
		ProjectID string          `json:"projectId,omitempty"`
		Data      any             `json:"data,omitempty"`
		Ack       json.RawMessage `json:"ack,omitempty"`
	}{name, projectID, data, ack}
	b, err := json.Marshal(msg)
	if err != nil {
		// Only programming errors get here: data is always a plain struct or map.
		return []byte(`{"event":"error","data":{"code":"INTERNAL_ERROR","message":"encoding failed"}}`)
	}
	return b
}

// ErrorMessage encodes an "error" message answering the frame with ack.
func ErrorMessage(e Error, ack json.RawMessage) []byte {
	return Message(ErrorEvent, "", e, ack)
}

// AppendEvent appends a domain event as clients receive it:
// {"event","projectId","seq","ts","data"}, ts in epoch ms. data must be one
// JSON value (an object), already compact.
func AppendEvent(b []byte, name, projectID string, seq, ts int64, data []byte) []byte {
	if len(data) == 0 {
		data = []byte("{}")
	}
	b = append(b, `{"event":`...)
	b = appendJSONString(b, name)
	b = append(b, `,"projectId":`...)
	b = appendJSONString(b, projectID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// EventSize is a capacity that AppendEvent's output fits in.
func EventSize(name, projectID string, data []byte) int {
	return 96 + len(name) + len(projectID) + len(data)
}

// UserEvent encodes a user-targeted event (section 7): {"event","ts","data"},
// no projectId and no seq.
func UserEvent(name string, ts int64, data json.RawMessage) ([]byte, error) {
	return json.Marshal(struct {
		Event string          `json:"event"`
		TS    int64           `json:"ts"`
		Data  json.RawMessage `json:"data"`
	}{name, ts, data})
}

// HTTPError is the body of an HTTP error answer: {"error":{"code","message"}}.
type HTTPError struct {
	Error Error `json:"error"`
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
