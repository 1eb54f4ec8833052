package client

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
)

// ticket trades the current token for a one-time connect ticket (POST
// /api/tickets, the token in the Authorization header): the WebSocket and
// the event stream then connect with ?ticket=, so the token never goes into
// a URL, where proxies and logs keep it. A ticket opens one connection:
// every dial and every stream (re)open takes a fresh one.
func (c *Client) ticket(ctx context.Context) (string, failure, bool) {
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint("/api/tickets", ""), nil)
	if err != nil {
		return "", failure{err: err, fatal: true}, false
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "no connect ticket: " + err.Error()}}, false
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		f, _ := httpFailure(resp.StatusCode, body, "connect ticket refused")
		return "", f, false
	}
	var t struct {
		Ticket string `json:"ticket"`
	}
	if json.Unmarshal(body, &t) != nil || t.Ticket == "" {
		return "", failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "unreadable connect ticket answer"}}, false
	}
	return t.Ticket, failure{}, true
}
