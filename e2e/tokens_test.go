package e2e

// Tokens signed with a test server's secret: a user's, the backend's,
// expired ones, unsigned ones and any claims at all.

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/saga-family/sagapush/auth"
)

// token mints an HS256 token with the server's secret (auth.Mint: ttl <= 0
// means no exp).
func (s *testServer) token(t testing.TB, c auth.Claims, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(s.Secret, c, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// userToken is a 1-hour token of user id with access to projects.
func (s *testServer) userToken(t testing.TB, id string, projects ...string) string {
	t.Helper()
	return s.token(t, auth.Claims{UserID: id, Name: "Name of " + id, Projects: projects}, time.Hour)
}

// serviceToken is a 1-hour token with role service (the Saga backend).
func (s *testServer) serviceToken(t testing.TB) string {
	t.Helper()
	return s.token(t, auth.Claims{UserID: "backend", Role: auth.RoleService}, time.Hour)
}

// rawToken signs arbitrary claims with the server's secret (HS256): expired
// or not-yet-valid tokens, tokens without a user id...
func (s *testServer) rawToken(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expiredToken is a token of user id that expired two minutes ago (beyond
// the 30 s leeway).
func (s *testServer) expiredToken(t testing.TB, id string, projects ...string) string {
	t.Helper()
	now := time.Now()
	return s.rawToken(t, jwt.MapClaims{"userId": id, "projects": projects, "iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-2 * time.Minute).Unix()})
}

// tokenExp returns the exp claim of a token (zero when it has none).
func tokenExp(t testing.TB, tok string) time.Time {
	t.Helper()
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
		t.Fatal(err)
	}
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// algNoneToken is an unsigned token ("alg":"none") of user id.
func algNoneToken(id string) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(map[string]any{"userId": id, "sub": id, "exp": time.Now().Add(time.Hour).Unix()})
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + "."
}
