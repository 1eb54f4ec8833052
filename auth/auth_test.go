package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("test-secret-0123456789-abcdefghij")

// Keys are generated once: RSA generation is slow under -race.
var (
	rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	rsaKey2 = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	ecKey = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
	edKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func newVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	v, err := NewVerifier(t.Context(), cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func pemFile(t *testing.T, pub crypto.PublicKey) (path string, data []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	data = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	path = filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func mustVerify(t *testing.T, v *Verifier, token string) *Claims {
	t.Helper()
	c, err := v.Verify(token)
	if err != nil {
		t.Fatalf("Verify: unexpected error %v", err)
	}
	return c
}

// wantReason checks that Verify refused token with an *Error of reason,
// and that the message does not echo the token.
func wantReason(t *testing.T, v *Verifier, token, reason string) {
	t.Helper()
	c, err := v.Verify(token)
	if err == nil {
		t.Fatalf("Verify accepted the token (claims %+v), want refusal %q", c, reason)
	}
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not *Error", err, err)
	}
	if ae.Reason != reason {
		t.Fatalf("reason %q, want %q", ae.Reason, reason)
	}
	if errors.Is(err, ErrExpired) {
		t.Fatalf("refusal %q also matches ErrExpired", reason)
	}
	if !strings.Contains(err.Error(), reason) {
		t.Fatalf("message %q does not name the reason %q", err.Error(), reason)
	}
	if token != "" && strings.Contains(err.Error(), token) {
		t.Fatalf("error message contains the token")
	}
}

func now() int64 { return time.Now().Unix() }

func TestHS256UserIDAndSub(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	if !v.HasSecret() {
		t.Fatal("HasSecret false with a secret")
	}

	c := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"userId": "u1", "sub": "other", "exp": now() + 60}, ""))
	if c.UserID != "u1" {
		t.Fatalf("UserID %q, want userId claim u1 over sub", c.UserID)
	}
	c = mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u2"}, ""))
	if c.UserID != "u2" {
		t.Fatalf("UserID %q, want sub u2", c.UserID)
	}
	if !c.ExpiresAt.IsZero() {
		t.Fatalf("ExpiresAt %v for a token without exp", c.ExpiresAt)
	}
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"name": "x"}, ""), "no user id")
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"userId": "", "sub": ""}, ""), "no user id")
}

func TestClaimsMapping(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	exp := now() + 600
	c := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{
		"userId":   "u1",
		"name":     "Ada",
		"email":    "ada@example.com",
		"role":     "admin",
		"projects": []string{"p1", "p2"},
		"exp":      exp,
	}, ""))
	want := Claims{UserID: "u1", Name: "Ada", Email: "ada@example.com", Role: "admin", Projects: []string{"p1", "p2"}, ExpiresAt: time.Unix(exp, 0)}
	if c.UserID != want.UserID || c.Name != want.Name || c.Email != want.Email || c.Role != want.Role ||
		!slices.Equal(c.Projects, want.Projects) || !c.ExpiresAt.Equal(want.ExpiresAt) {
		t.Fatalf("claims %+v, want %+v", *c, want)
	}

	c = mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "role": "service"}, ""))
	if c.Role != "service" || c.Projects != nil {
		t.Fatalf("role %q projects %#v, want service and nil", c.Role, c.Projects)
	}
	for _, role := range []any{"superuser", "Admin", 7, []string{"admin"}} {
		c = mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "role": role}, ""))
		if c.Role != "" {
			t.Fatalf("role claim %v gave Role %q, want empty", role, c.Role)
		}
	}
	c = mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "projects": []string{}}, ""))
	if c.Projects == nil || len(c.Projects) != 0 {
		t.Fatalf("empty projects list gave %#v, want empty non-nil", c.Projects)
	}
	// A mistyped access list must not be half-read.
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "projects": "p1"}, ""), "malformed token")
}

func TestExpiry(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})

	expired := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "exp": now() - 120}, "")
	_, err := v.Verify(expired)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("expired token: error %v, want ErrExpired", err)
	}
	var ae *Error
	if errors.As(err, &ae) {
		t.Fatalf("expired token also gave *Error %q", ae.Reason)
	}
	if strings.Contains(err.Error(), expired) {
		t.Fatal("error message contains the token")
	}

	// Within the default 30 s leeway.
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "exp": now() - 10}, ""))

	// A smaller configured leeway applies.
	strict := newVerifier(t, Config{Secret: secret, Leeway: time.Second})
	if _, err := strict.Verify(sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "exp": now() - 10}, "")); !errors.Is(err, ErrExpired) {
		t.Fatalf("leeway 1s, exp 10s ago: error %v, want ErrExpired", err)
	}
}

func TestNotBefore(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "nbf": now() + 300}, ""), "token not valid yet")
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "nbf": now() + 10}, ""))
}

func TestMissingAndMalformed(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	wantReason(t, v, "", "missing token")
	for _, tok := range []string{"abc", "a.b.c", "a.b", "....", strings.Repeat("x", 20000),
		"eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln"} {
		wantReason(t, v, tok, "malformed token")
	}
}

func TestBadSignature(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-some-length!!"), jwt.MapClaims{"sub": "u1"}, ""), "bad signature")

	// Tampered payload, original signature.
	good := sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "role": "user"}, "")
	parts := strings.Split(good, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"u1","role":"admin"}`))
	wantReason(t, v, strings.Join(parts, "."), "bad signature")
}

func TestAlgNone(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	payload := enc(`{"sub":"u1","role":"admin"}`)
	pemPath, _ := pemFile(t, &rsaKey().PublicKey)
	for _, cfg := range []Config{{Secret: secret}, {PublicKeyFile: pemPath}, {Secret: secret, PublicKeyFile: pemPath}} {
		v := newVerifier(t, cfg)
		for _, alg := range []string{"none", "None", "NONE"} {
			hdr := enc(`{"alg":"` + alg + `","typ":"JWT"}`)
			wantReason(t, v, hdr+"."+payload+".", "algorithm not allowed")
			wantReason(t, v, hdr+"."+payload+"."+enc("sig"), "algorithm not allowed")
		}
	}
}

func TestAlgorithmMustFitKey(t *testing.T) {
	pemPath, pemBytes := pemFile(t, &rsaKey().PublicKey)
	claims := jwt.MapClaims{"sub": "u1"}

	rsaOnly := newVerifier(t, Config{PublicKeyFile: pemPath})
	if rsaOnly.HasSecret() {
		t.Fatal("HasSecret true without a secret")
	}
	wantReason(t, rsaOnly, sign(t, jwt.SigningMethodHS256, secret, claims, ""), "algorithm not allowed")
	// The classic attack: HMAC keyed with the public key the server holds.
	attack := sign(t, jwt.SigningMethodHS256, pemBytes, claims, "")
	wantReason(t, rsaOnly, attack, "algorithm not allowed")

	secretOnly := newVerifier(t, Config{Secret: secret})
	wantReason(t, secretOnly, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, ""), "algorithm not allowed")

	// With both, each family uses its own key only.
	both := newVerifier(t, Config{Secret: secret, PublicKeyFile: pemPath})
	mustVerify(t, both, sign(t, jwt.SigningMethodHS256, secret, claims, ""))
	mustVerify(t, both, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, ""))
	wantReason(t, both, attack, "bad signature")
	wantReason(t, both, sign(t, jwt.SigningMethodES256, ecKey(), claims, ""), "algorithm not allowed")
}

func TestPublicKeyFiles(t *testing.T) {
	claims := jwt.MapClaims{"userId": "u1", "exp": now() + 60}
	cases := []struct {
		name   string
		pub    crypto.PublicKey
		method jwt.SigningMethod
		priv   any
		other  jwt.SigningMethod // a family the key does not fit
		oKey   any
	}{
		{"RS256", &rsaKey().PublicKey, jwt.SigningMethodRS256, rsaKey(), jwt.SigningMethodES256, ecKey()},
		{"ES256", &ecKey().PublicKey, jwt.SigningMethodES256, ecKey(), jwt.SigningMethodRS256, rsaKey()},
		{"EdDSA", edKey().Public(), jwt.SigningMethodEdDSA, edKey(), jwt.SigningMethodES256, ecKey()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := pemFile(t, tc.pub)
			v := newVerifier(t, Config{PublicKeyFile: path})
			if c := mustVerify(t, v, sign(t, tc.method, tc.priv, claims, "")); c.UserID != "u1" {
				t.Fatalf("UserID %q", c.UserID)
			}
			wantReason(t, v, sign(t, tc.other, tc.oKey, claims, ""), "algorithm not allowed")
		})
	}

	// Same algorithm, another key.
	path, _ := pemFile(t, &rsaKey().PublicKey)
	v := newVerifier(t, Config{PublicKeyFile: path})
	wantReason(t, v, sign(t, jwt.SigningMethodRS256, rsaKey2(), claims, ""), "bad signature")

	// PKCS#1 "RSA PUBLIC KEY" is read too.
	p1 := filepath.Join(t.TempDir(), "pkcs1.pem")
	if err := os.WriteFile(p1, pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey().PublicKey)}), 0o600); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, newVerifier(t, Config{PublicKeyFile: p1}), sign(t, jwt.SigningMethodRS256, rsaKey(), claims, ""))
}

func TestNewVerifierErrors(t *testing.T) {
	if _, err := NewVerifier(t.Context(), Config{}); err == nil {
		t.Fatal("no key source: want error")
	}
	if _, err := NewVerifier(t.Context(), Config{PublicKeyFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Fatal("missing key file: want error")
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a pem file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(t.Context(), Config{PublicKeyFile: bad}); err == nil {
		t.Fatal("garbage key file: want error")
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	if _, err := NewVerifier(t.Context(), Config{JWKSURL: srv.URL + "/jwks.json"}); err == nil {
		t.Fatal("unreachable JWKS: want error")
	}
}

func TestIssuerAudience(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret, Issuer: "https://saga.example", Audience: "push"})
	tok := func(c jwt.MapClaims) string {
		c["sub"] = "u1"
		return sign(t, jwt.SigningMethodHS256, secret, c, "")
	}
	mustVerify(t, v, tok(jwt.MapClaims{"iss": "https://saga.example", "aud": "push"}))
	mustVerify(t, v, tok(jwt.MapClaims{"iss": "https://saga.example", "aud": []string{"api", "push"}}))
	wantReason(t, v, tok(jwt.MapClaims{"iss": "https://evil.example", "aud": "push"}), "wrong issuer")
	wantReason(t, v, tok(jwt.MapClaims{"aud": "push"}), "wrong issuer")
	wantReason(t, v, tok(jwt.MapClaims{"iss": "https://saga.example", "aud": "api"}), "wrong audience")
	wantReason(t, v, tok(jwt.MapClaims{"iss": "https://saga.example"}), "wrong audience")
	wantReason(t, v, tok(jwt.MapClaims{"iss": "https://saga.example", "aud": []string{""}}), "wrong audience")
	wantReason(t, v, tok(jwt.MapClaims{"iss": "https://evil.example", "aud": "push", "exp": now() - 120}), "wrong issuer")
	// Not configured: not checked.
	mustVerify(t, newVerifier(t, Config{Secret: secret}), tok(jwt.MapClaims{"iss": "anyone", "aud": "any"}))
}

// jwksServer serves a JWK Set whose keys the test can change, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu    sync.Mutex
	keys  map[string]any // kid -> public key
	fetch atomic.Int64
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: map[string]any{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetch.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		var set jwkset.JWKSMarshal
		for kid, pub := range s.keys {
			jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, USE: jwkset.UseSig}})
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			set.Keys = append(set.Keys, jwk.Marshal())
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(kid string, pub any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[kid] = pub
}

func TestJWKS(t *testing.T) {
	srv := newJWKSServer(t)
	srv.set("k1", &rsaKey().PublicKey)
	srv.set("e1", edKey().Public())
	v := newVerifier(t, Config{JWKSURL: srv.URL})
	claims := jwt.MapClaims{"sub": "u1", "exp": now() + 60}

	if c := mustVerify(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, "k1")); c.UserID != "u1" {
		t.Fatalf("UserID %q", c.UserID)
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, edKey(), claims, "e1"))
	// No kid: any fitting key of the set.
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, ""))

	wantReason(t, v, sign(t, jwt.SigningMethodRS256, rsaKey2(), claims, "k1"), "bad signature")
	wantReason(t, v, sign(t, jwt.SigningMethodES256, ecKey(), claims, "k1"), "algorithm not allowed")
	wantReason(t, v, sign(t, jwt.SigningMethodHS256, secret, claims, "k1"), "algorithm not allowed")
	if got := srv.fetch.Load(); got != 1 {
		t.Fatalf("%d JWKS fetches for known kids, want 1 (the initial load)", got)
	}
}

func TestJWKSRefreshOnUnknownKID(t *testing.T) {
	srv := newJWKSServer(t)
	srv.set("k1", &rsaKey().PublicKey)
	v := newVerifier(t, Config{JWKSURL: srv.URL})
	claims := jwt.MapClaims{"sub": "u1"}

	// The issuer rotates to a new key after we loaded the set.
	srv.set("k2", &ecKey().PublicKey)
	if c := mustVerify(t, v, sign(t, jwt.SigningMethodES256, ecKey(), claims, "k2")); c.UserID != "u1" {
		t.Fatalf("UserID %q", c.UserID)
	}
	if got := srv.fetch.Load(); got != 2 {
		t.Fatalf("%d JWKS fetches, want 2 (load + refresh on the new kid)", got)
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, ecKey(), claims, "k2"))
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, "k1"))
	if got := srv.fetch.Load(); got != 2 {
		t.Fatalf("%d JWKS fetches, want still 2 once the kid is known", got)
	}
}

func TestJWKSUnknownKIDRefusedAndRateLimited(t *testing.T) {
	srv := newJWKSServer(t)
	srv.set("k1", &rsaKey().PublicKey)
	v := newVerifier(t, Config{JWKSURL: srv.URL})
	claims := jwt.MapClaims{"sub": "u1"}

	start := time.Now()
	wantReason(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, "nope"), "unknown key id")
	if got := srv.fetch.Load(); got != 2 {
		t.Fatalf("%d JWKS fetches, want 2 (load + one refresh for the unknown kid)", got)
	}
	// Further unknown kids right away do not hit the JWKS endpoint again, and
	// do not wait for the limiter either.
	for _, kid := range []string{"nope2", "nope3", "nope4"} {
		wantReason(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, kid), "unknown key id")
	}
	if got := srv.fetch.Load(); got != 2 {
		t.Fatalf("%d JWKS fetches after more unknown kids, want 2 (rate-limited)", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("unknown kids took %v; Verify should not block on the limiter", d)
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), claims, "k1"))
}

func TestJWKSStopsWithContext(t *testing.T) {
	srv := newJWKSServer(t)
	srv.set("k1", &rsaKey().PublicKey)
	ctx, cancel := context.WithCancel(t.Context())
	v, err := NewVerifier(ctx, Config{JWKSURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	// Known keys keep working; unknown kids no longer trigger fetches.
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), jwt.MapClaims{"sub": "u1"}, "k1"))
	wantReason(t, v, sign(t, jwt.SigningMethodRS256, rsaKey(), jwt.MapClaims{"sub": "u1"}, "k9"), "unknown key id")
	if got := srv.fetch.Load(); got != 1 {
		t.Fatalf("%d JWKS fetches after cancel, want 1", got)
	}
}

func TestMint(t *testing.T) {
	v := newVerifier(t, Config{Secret: secret})
	tok, err := Mint(secret, Claims{UserID: "u1", Name: "Ada", Role: "service", Projects: []string{"p1"}}, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := mustVerify(t, v, tok)
	if c.UserID != "u1" || c.Name != "Ada" || c.Role != "service" || !slices.Equal(c.Projects, []string{"p1"}) {
		t.Fatalf("claims %+v", *c)
	}
	if d := time.Until(c.ExpiresAt); d < 14*time.Minute || d > 16*time.Minute {
		t.Fatalf("ExpiresAt %v, want about 15 min from now", c.ExpiresAt)
	}

	// sub and userId both carry the id; no exp when ttl <= 0.
	tok, err = Mint(secret, Claims{UserID: "u2"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mc jwt.MapClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &mc); err != nil {
		t.Fatal(err)
	}
	if mc["sub"] != "u2" || mc["userId"] != "u2" || mc["exp"] != nil || mc["iat"] == nil || mc["name"] != nil || mc["projects"] != nil {
		t.Fatalf("minted claims %v", mc)
	}
	if c := mustVerify(t, v, tok); !c.ExpiresAt.IsZero() {
		t.Fatalf("ExpiresAt %v, want zero", c.ExpiresAt)
	}

	if _, err := Mint(nil, Claims{UserID: "u1"}, time.Minute); err == nil {
		t.Fatal("Mint with an empty secret: want error")
	}
	if _, err := Mint(secret, Claims{}, time.Minute); err == nil {
		t.Fatal("Mint without a user id: want error")
	}
}

func TestTokenFromRequest(t *testing.T) {
	cases := []struct {
		name, header, url, want, bearer string
	}{
		{"bearer", "Bearer abc.def.ghi", "/ws", "abc.def.ghi", "abc.def.ghi"},
		{"lowercase scheme", "bearer abc", "/ws", "abc", "abc"},
		{"header wins", "BEARER hdr", "/ws?token=q", "hdr", "hdr"},
		{"query", "", "/sse?projects=p1&token=q.r.s", "q.r.s", ""},
		{"other scheme falls back to query", "Basic dXNlcjpwYXNz", "/sse?token=q", "q", ""},
		{"empty bearer falls back to query", "Bearer ", "/sse?token=q", "q", ""},
		{"none", "", "/ws", "", ""},
		{"basic only", "Basic dXNlcjpwYXNz", "/ws", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tc.url, nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			if got := TokenFromRequest(r); got != tc.want {
				t.Fatalf("TokenFromRequest = %q, want %q", got, tc.want)
			}
			// TokenFromHeader never reads the URL.
			if got := TokenFromHeader(r); got != tc.bearer {
				t.Fatalf("TokenFromHeader = %q, want %q", got, tc.bearer)
			}
		})
	}
}
