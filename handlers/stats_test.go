package handlers

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/hub"
)

const statsPath = "/api/websocket/stats"

func TestStatsAuth(t *testing.T) {
	h := testServer(t, nil)
	for _, tc := range append(tokenRefusals,
		tokenCase{"user role", userToken, http.StatusForbidden, "FORBIDDEN", "this token's role may not do this"}) {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, do(t, h, "GET", statsPath, tc.token, ""), tc.status, tc.code, tc.message)
		})
	}
	// The API never takes a token from the URL, even with a header too.
	const inURL = "the API takes the token only from the Authorization header (Authorization: Bearer <token>), not from the URL"
	wantError(t, do(t, h, "GET", statsPath+"?token="+adminToken, "", ""), http.StatusUnauthorized, "UNAUTHORIZED", inURL)
	wantError(t, do(t, h, "GET", statsPath+"?token="+adminToken, adminToken, ""), http.StatusUnauthorized, "UNAUTHORIZED", inURL)
}

func TestStats(t *testing.T) {
	st := fakeStats{
		Connections: 3, Users: 2, RateWindow: 30000, RateMax: 50,
		Projects:   []hub.ProjectStat{{ProjectID: "p1", Connections: 2}, {ProjectID: "p2", Connections: 1}},
		Transports: map[string]int{"websocket": 2, "sse": 1},
	}
	h := testServer(t, func(c *Config) { c.Stats, c.Unauthenticated = st, func() int { return 4 } })
	for _, token := range []string{adminToken, serviceToken} {
		rec := do(t, h, "GET", statsPath, token, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", token, rec.Code, rec.Body)
		}
		var got struct {
			Success   bool            `json:"success"`
			Data      json.RawMessage `json:"data"`
			Timestamp string          `json:"timestamp"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || !got.Success {
			t.Fatalf("body %s: %v", rec.Body, err)
		}
		const want = `{"projectConnections":[{"projectId":"p1","connectionCount":2},{"projectId":"p2","connectionCount":1}],` +
			`"projectCount":2,"rateLimitStats":{"activeUsers":2,"maxEventsPerWindow":50,"rateLimitWindow":30000},` +
			`"totalConnections":3,"transports":{"sse":1,"websocket":2},"unauthenticated":4,"userCount":2}`
		if string(got.Data) != want {
			t.Errorf("data\n%s\nwant\n%s", got.Data, want)
		}
		if _, err := time.Parse(time.RFC3339Nano, got.Timestamp); err != nil {
			t.Errorf("timestamp: %v", err)
		}
	}
}

// With no connection at all the lists are empty, not null, and every
// transport is counted.
func TestStatsEmpty(t *testing.T) {
	rec := do(t, testServer(t, nil), "GET", statsPath, adminToken, "")
	var got struct {
		Data struct {
			ProjectConnections json.RawMessage `json:"projectConnections"`
			Transports         json.RawMessage `json:"transports"`
			Unauthenticated    json.RawMessage `json:"unauthenticated"`
		} `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if string(got.Data.ProjectConnections) != "[]" || string(got.Data.Transports) != `{"sse":0,"websocket":0}` || string(got.Data.Unauthenticated) != "0" {
		t.Errorf("empty stats %s", rec.Body)
	}
}

// requireRole hands the authenticated user on to the handler.
func TestRequireRoleKeepsUser(t *testing.T) {
	var got *hub.User
	next := func(c echo.Context) error {
		got, _ = c.Get(userKey).(*hub.User)
		return nil
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Authorization", "Bearer "+serviceToken)
	c := echo.New().NewContext(req, httptest.NewRecorder())
	if err := requireRole(fakeAuth{}, "service")(next)(c); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.ID != "backend" {
		t.Errorf("user in context %+v, want backend", got)
	}
}
