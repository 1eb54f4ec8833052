package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/internal/protocol"
)

// Publisher stores a domain event and returns its seq (the store is one).
type Publisher interface {
	Publish(ctx context.Context, projectID, name string, data json.RawMessage) (int64, error)
}

// UserEvents relays an event to one user's open connections (*hub.Hub is
// one).
type UserEvents interface {
	UserEvent(ctx context.Context, userID, name string, data json.RawMessage) error
}

type publishRequest struct {
	ProjectID string          `json:"projectId"`
	UserID    string          `json:"userId"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
}

// publish answers POST /api/events (docs/protocol.md section 8): a domain event for
// a project, stored, or any event for a user, relayed only. requireRole has
// already let the token through.
func publish(p Publisher, users UserEvents, log *slog.Logger) echo.HandlerFunc {
	return func(c echo.Context) error {
		req, err := decodePublish(c.Request().Body)
		if err != nil {
			return err
		}
		bodyRead(c)
		ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
		defer cancel()
		if req.ProjectID != "" {
			seq, err := p.Publish(ctx, req.ProjectID, req.Event, req.Data)
			if err != nil {
				log.Error("publish failed", "project", req.ProjectID, "event", req.Event, "err", err)
				return newError(http.StatusServiceUnavailable, protocol.CodeInternalError, "the event could not be stored")
			}
			return c.JSON(http.StatusAccepted, map[string]any{"projectId": req.ProjectID, "seq": seq})
		}
		if err := users.UserEvent(ctx, req.UserID, req.Event, req.Data); err != nil {
			log.Error("user event failed", "event", req.Event, "err", err)
			return newError(http.StatusServiceUnavailable, protocol.CodeInternalError, "the event could not be relayed")
		}
		return c.JSON(http.StatusAccepted, map[string]any{"userId": req.UserID})
	}
}

// decodePublish reads and checks a publish body: exactly one of projectId
// and userId, a known domain event for a project, a name that is not the
// server's own for a user, and data an object.
func decodePublish(body io.Reader) (publishRequest, error) {
	var req publishRequest
	dec := json.NewDecoder(body)
	err := dec.Decode(&req)
	if err == nil {
		// One JSON object and nothing after it.
		if err = dec.Decode(&struct{}{}); err == io.EOF {
			err = nil
		} else if err == nil {
			err = errors.New("more than one JSON value")
		}
	}
	if err != nil {
		return req, bodyError(err, "body must be a JSON object {projectId|userId, event, data}")
	}
	if len(req.Data) == 0 || req.Data[0] != '{' {
		return req, badRequest("data must be a JSON object")
	}
	// One line of JSON: an SSE data line must not hold a newline, and the
	// bytes are then what every client gets.
	var compact bytes.Buffer
	if err := json.Compact(&compact, req.Data); err != nil {
		return req, badRequest("data must be a JSON object")
	}
	req.Data = compact.Bytes()
	switch {
	case req.ProjectID != "" && req.UserID != "":
		return req, badRequest("give projectId or userId, not both")
	case req.ProjectID != "":
		if !protocol.DomainEvents[req.Event] {
			return req, badRequest("unknown event: it must be one of docs/protocol.md section 6")
		}
		if !protocol.ValidID(req.ProjectID) {
			return req, badRequest("invalid projectId")
		}
	case req.UserID != "":
		if req.Event == "" || len(req.Event) > 64 || !protocol.ValidID(req.Event) {
			return req, badRequest("invalid event name")
		}
		if protocol.ServerOwned(req.Event) {
			return req, badRequest("event name " + req.Event + " is the server's own: a user-targeted event needs another")
		}
		if !protocol.ValidID(req.UserID) {
			return req, badRequest("invalid userId")
		}
	default:
		return req, badRequest("projectId or userId is required")
	}
	return req, nil
}
