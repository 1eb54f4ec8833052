package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// ClientFrame is one decoded client frame: {"event", "data", "ack"}.
type ClientFrame struct {
	Event string
	Data  json.RawMessage
	Ack   json.RawMessage // a JSON number, echoed as is; nil when absent
}

var errInvalid = errors.New("invalid message")

// DecodeClientFrame parses a client frame. It accepts only a JSON object
// whose "event" is a non-empty string and whose "ack", when present, is a
// number. The ack is returned with the error whenever it was valid, so that
// even a refusal answers with it.
func DecodeClientFrame(b []byte) (ClientFrame, error) {
	var raw struct {
		Event json.RawMessage `json:"event"`
		Data  json.RawMessage `json:"data"`
		Ack   json.RawMessage `json:"ack"`
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !utf8.Valid(b) {
		return ClientFrame{}, errors.New("a frame must be a JSON object")
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return ClientFrame{}, errors.New("a frame must be a JSON object")
	}
	var f ClientFrame
	if len(raw.Ack) > 0 && !bytes.Equal(raw.Ack, []byte("null")) {
		// raw.Ack is one valid JSON value: a number starts with '-' or a
		// digit (json.Number alone would also take a numeric string).
		if c := raw.Ack[0]; (c != '-' && (c < '0' || c > '9')) || len(raw.Ack) > 32 {
			return ClientFrame{}, errors.New(`"ack" must be a number`)
		}
		f.Ack = raw.Ack
	}
	if len(raw.Event) == 0 || raw.Event[0] != '"' || json.Unmarshal(raw.Event, &f.Event) != nil || f.Event == "" {
		f.Event = ""
		return f, errors.New(`"event" must be a non-empty string`)
	}
	if len(raw.Data) > 0 && !bytes.Equal(raw.Data, []byte("null")) {
		f.Data = raw.Data
	}
	return f, nil
}

// ProjectRef is the data of join_project and leave_project: an object
// {"projectId","since"?} or a bare projectId string.
type ProjectRef struct {
	ProjectID string
	Since     *int64
}

// DecodeProjectRef reads the data of join_project or leave_project.
func DecodeProjectRef(data json.RawMessage) (ProjectRef, error) {
	var ref ProjectRef
	if len(data) == 0 {
		return ref, errors.New("data must hold a projectId")
	}
	if data[0] == '"' {
		if err := json.Unmarshal(data, &ref.ProjectID); err != nil {
			return ref, errInvalid
		}
	} else {
		var obj struct {
			ProjectID string      `json:"projectId"`
			Since     json.Number `json:"since"`
		}
		if err := json.Unmarshal(data, &obj); err != nil {
			return ref, errors.New("data must be {\"projectId\"} or a project id string")
		}
		ref.ProjectID = obj.ProjectID
		if obj.Since != "" {
			n, err := obj.Since.Int64()
			if err != nil || n < 0 {
				return ref, errors.New("since must be a non-negative integer")
			}
			ref.Since = &n
		}
	}
	if !ValidID(ref.ProjectID) {
		return ref, errors.New("invalid projectId")
	}
	return ref, nil
}

// Typing is the data of typing_start and typing_stop.
type Typing struct {
	ProjectID string `json:"projectId"`
	StoryID   string `json:"storyId"`
}

// DecodeTyping reads the data of typing_start or typing_stop.
func DecodeTyping(data json.RawMessage) (Typing, error) {
	var t Typing
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &t) != nil {
		return t, errors.New("data must be {\"projectId\",\"storyId\"}")
	}
	if !ValidID(t.ProjectID) {
		return t, errors.New("invalid projectId")
	}
	if len(t.StoryID) > MaxIDLen || !utf8.ValidString(t.StoryID) {
		return t, errors.New("invalid storyId")
	}
	return t, nil
}

type authData struct {
	Token string `json:"token"`
}

// DecodeAuth reads the data of an auth frame: the token.
func DecodeAuth(data json.RawMessage) (string, error) {
	var a authData
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &a) != nil || a.Token == "" {
		return "", errors.New("data must be {\"token\"}")
	}
	return a.Token, nil
}
