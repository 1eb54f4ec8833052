// Package auth verifies and mints the JWTs of Saga push.
package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// DefaultLeeway is the clock skew allowed on exp and nbf when Config.Leeway is zero.
const DefaultLeeway = 30 * time.Second

// maxTokenLen bounds the work spent on a token: real JWTs are a few hundred
// bytes, and a WebSocket frame is at most 16 KiB anyway.
const maxTokenLen = 16 << 10

// JWKS tuning. Refreshes on an unknown kid are rate-limited so that tokens
// carrying made-up kids cannot turn the server into a load generator against
// the identity provider; jwksWaitMax bounds both the wait for the limiter and
// the refresh request itself, so a Verify never blocks for long.
const (
	jwksRefreshEvery    = 10 * time.Second
	jwksWaitMax         = 5 * time.Second
	jwksHTTPTimeout     = 10 * time.Second
	jwksRefreshInterval = time.Hour
)

// Config says which keys sign valid tokens and which claims they must carry.
// At least one of Secret, PublicKeyFile and JWKSURL must be set.
type Config struct {
	Secret        []byte        // JWT_SECRET, HMAC (HS256; HS384 and HS512 are accepted too)
	PublicKeyFile string        // JWT_PUBLIC_KEY_FILE: PEM public key, RS256 / ES256 / EdDSA (type detected from the key)
	JWKSURL       string        // JWT_JWKS_URL: keys chosen by kid, refreshed on an unknown kid
	Issuer        string        // when set, iss must match
	Audience      string        // when set, aud must contain it
	Leeway        time.Duration // DefaultLeeway when zero
}

// Claims is what Saga push uses from a verified token.
type Claims struct {
	UserID    string    // claim "userId", else "sub"
	Name      string    // "name" (optional)
	Email     string    // "email" (optional)
	Role      string    // RoleAdmin, RoleService or ""
	Projects  []string  // "projects": project ids (nil when absent)
	ExpiresAt time.Time // zero when the token has no exp
}

// Roles a token may carry.
const (
	RoleAdmin   = "admin"
	RoleService = "service"
)

// ErrExpired is returned for a token whose exp is past (beyond the leeway);
// the protocol answers it with TOKEN_EXPIRED rather than UNAUTHORIZED.
var ErrExpired = errors.New("token expired")

// Error is every refusal other than expiry (protocol code UNAUTHORIZED).
// Reason is a short fixed text that never contains the token.
type Error struct{ Reason string }

func (e *Error) Error() string { return "unauthorized: " + e.Reason }

func refuse(reason string) *Error { return &Error{Reason: reason} }

// Refusal reasons.
const (
	reasonMissing      = "missing token"
	reasonMalformed    = "malformed token"
	reasonBadSignature = "bad signature"
	reasonAlgorithm    = "algorithm not allowed"
	reasonNotYetValid  = "token not valid yet"
	reasonIssuer       = "wrong issuer"
	reasonAudience     = "wrong audience"
	reasonNoUser       = "no user id"
	reasonUnknownKID   = "unknown key id"
	reasonKeyLookup    = "signing key unavailable"
	reasonClaims       = "invalid claims"
)

var (
	hmacAlgs = []string{"HS256", "HS384", "HS512"}
	rsaAlgs  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ecAlgs   = []string{"ES256", "ES384", "ES512"}
	edAlgs   = []string{"EdDSA"}
)

// Verifier checks tokens against the configured keys. It is safe for
// concurrent use.
type Verifier struct {
	secret []byte
	pubKey crypto.PublicKey // from PublicKeyFile, nil when unset
	jwks   keyfunc.Keyfunc  // nil when JWKSURL is unset
	ctx    context.Context  // bounds JWKS refreshes made by Verify
	// stopJWKS ends the refresh goroutine; the ctx given to NewVerifier ends
	// it too, which is how callers stop it.
	stopJWKS context.CancelFunc
	issuer   string
	allowed  []string // union of the algorithm families of the configured keys
	parser   *jwt.Parser
}

// NewVerifier loads the configured keys. With a JWKS URL the set is fetched
// once now (an error if that fails) and then refreshed in the background
// until ctx is done.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	if len(cfg.Secret) == 0 && cfg.PublicKeyFile == "" && cfg.JWKSURL == "" {
		return nil, errors.New("auth: no key source: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	v := &Verifier{secret: slices.Clone(cfg.Secret), ctx: ctx, issuer: cfg.Issuer}
	if len(v.secret) > 0 {
		v.allowed = append(v.allowed, hmacAlgs...)
	}
	if cfg.PublicKeyFile != "" {
		key, err := loadPublicKey(cfg.PublicKeyFile)
		if err != nil {
			return nil, err
		}
		v.pubKey = key
		v.allowed = append(v.allowed, algsForKey(key)...)
	}
	if cfg.JWKSURL != "" {
		noErrorFirst := false // a JWKS that cannot be loaded at start is a configuration error
		// The refresh goroutine starts before the first fetch: stop it if that fails.
		jctx, stop := context.WithCancel(ctx)
		kf, err := keyfunc.NewDefaultOverrideCtx(jctx, []string{cfg.JWKSURL}, keyfunc.Override{
			HTTPTimeout:               jwksHTTPTimeout,
			NoErrorReturnFirstHTTPReq: &noErrorFirst,
			RateLimitWaitMax:          jwksWaitMax,
			RefreshInterval:           jwksRefreshInterval,
			RefreshUnknownKID:         rate.NewLimiter(rate.Every(jwksRefreshEvery), 1),
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("auth: load JWKS %s: %w", cfg.JWKSURL, err)
		}
		v.jwks, v.ctx, v.stopJWKS = kf, jctx, stop
		for _, fam := range [][]string{rsaAlgs, ecAlgs, edAlgs} {
			for _, alg := range fam {
				if !slices.Contains(v.allowed, alg) {
					v.allowed = append(v.allowed, alg)
				}
			}
		}
	}
	leeway := cfg.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(v.allowed), jwt.WithLeeway(leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// HasSecret tells whether an HMAC secret is configured, i.e. whether Mint
// can produce tokens this Verifier accepts.
func (v *Verifier) HasSecret() bool { return len(v.secret) > 0 }

// Verify checks token and returns its claims. Errors are ErrExpired or *Error.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, refuse(reasonMissing)
	}
	if len(token) > maxTokenLen {
		return nil, refuse(reasonMalformed)
	}
	var tc tokenClaims
	tok, err := v.parser.ParseWithClaims(token, &tc, v.keyFor)
	if err != nil {
		return nil, v.classify(tok, &tc, err)
	}
	userID := string(tc.UserID)
	if userID == "" {
		userID = string(tc.Sub)
	}
	if userID == "" {
		return nil, refuse(reasonNoUser)
	}
	c := &Claims{
		UserID:   userID,
		Name:     string(tc.Name),
		Email:    string(tc.Email),
		Projects: tc.Projects,
	}
	if r := string(tc.Role); r == RoleAdmin || r == RoleService {
		c.Role = r
	}
	if tc.ExpiresAt != nil {
		c.ExpiresAt = tc.ExpiresAt.Time
	}
	return c, nil
}

// keyFor picks the key for the token's algorithm family, so that a key of one
// family can never verify a token of another (the HS256-with-public-key attack).
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodHMAC); ok {
		if len(v.secret) == 0 {
			return nil, refuse(reasonAlgorithm)
		}
		return v.secret, nil
	}
	var keys []jwt.VerificationKey
	if v.pubKey != nil && keyFits(t.Method, v.pubKey) {
		keys = append(keys, v.pubKey)
	}
	if v.jwks != nil {
		found, err := v.jwksKeys(t)
		if err != nil && len(keys) == 0 {
			return nil, err
		}
		// With a PEM key that fits, a JWKS miss is moot: the PEM key may verify it.
		keys = append(keys, found...)
	}
	switch len(keys) {
	case 0:
		return nil, refuse(reasonAlgorithm)
	case 1:
		return keys[0], nil
	default:
		return jwt.VerificationKeySet{Keys: keys}, nil
	}
}

// jwksKeys returns the JWKS keys that may verify t: the one named by its kid
// (refreshing the set once, rate-limited, when the kid is unknown), or every
// fitting key when the token has no kid.
func (v *Verifier) jwksKeys(t *jwt.Token) ([]jwt.VerificationKey, error) {
	store := v.jwks.Storage()
	var jwks []jwkset.JWK
	if kidv, ok := t.Header[jwkset.HeaderKID]; ok {
		kid, ok := kidv.(string)
		if !ok {
			return nil, refuse(reasonMalformed)
		}
		// Any failure here (not served, refresh rate-limited or failed) means
		// the key is not known to us.
		jwk, err := store.KeyRead(v.ctx, kid)
		if err != nil {
			return nil, refuse(reasonUnknownKID)
		}
		if a := jwk.Marshal().ALG.String(); a != "" && a != t.Method.Alg() {
			return nil, refuse(reasonAlgorithm)
		}
		jwks = []jwkset.JWK{jwk}
	} else {
		all, err := store.KeyReadAll(v.ctx)
		if err != nil {
			return nil, refuse(reasonKeyLookup)
		}
		jwks = all
	}
	var keys []jwt.VerificationKey
	for _, jwk := range jwks {
		m := jwk.Marshal()
		if m.USE != "" && m.USE != jwkset.UseSig {
			continue // an encryption key must not verify signatures
		}
		if a := m.ALG.String(); a != "" && a != t.Method.Alg() {
			continue
		}
		key := jwk.Key()
		if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
			key = pk.Public() // a JWKS may carry private keys; verify with the public half
		}
		if keyFits(t.Method, key) {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, refuse(reasonAlgorithm)
	}
	return keys, nil
}

// classify turns a jwt error into ErrExpired or an *Error. The jwt messages
// are not passed on: the refusal reason is enough for clients, and fixed
// texts cannot leak anything from the token.
func (v *Verifier) classify(tok *jwt.Token, tc *tokenClaims, err error) error {
	if errors.Is(err, jwt.ErrTokenMalformed) || tok == nil {
		return refuse(reasonMalformed)
	}
	// The parser reports an algorithm outside WithValidMethods (alg none
	// included) as a bad signature; tell the two apart for the client.
	if alg, _ := tok.Header["alg"].(string); !slices.Contains(v.allowed, alg) {
		return refuse(reasonAlgorithm)
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return refuse(reasonBadSignature)
	// Refusals a fresh token would not cure come before expiry, so a client
	// is not told to refresh in vain.
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), v.issuer != "" && tc.Issuer == "":
		return refuse(reasonIssuer)
	case errors.Is(err, jwt.ErrTokenInvalidAudience), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// iss and aud are the only claims we require, and a missing iss was handled above.
		return refuse(reasonAudience)
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return refuse(reasonNotYetValid)
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return refuse(reasonClaims)
	default:
		return refuse(reasonMalformed)
	}
}

// keyFits tells whether key can verify tokens signed with method, so a key
// is never handed to the wrong algorithm (and the client hears "algorithm
// not allowed" rather than "bad signature").
func keyFits(method jwt.SigningMethod, key any) bool {
	alg := method.Alg()
	switch k := key.(type) {
	case *rsa.PublicKey:
		return slices.Contains(rsaAlgs, alg)
	case *ecdsa.PublicKey:
		return slices.Contains(algsForKey(k), alg)
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// algsForKey lists the JWT algorithms a public key can verify.
func algsForKey(key crypto.PublicKey) []string {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}
		case elliptic.P384():
			return []string{"ES384"}
		case elliptic.P521():
			return []string{"ES512"}
		}
	case ed25519.PublicKey:
		return edAlgs
	}
	return nil
}

// loadPublicKey reads the first usable public key of a PEM file: a PKIX
// "PUBLIC KEY", a PKCS#1 "RSA PUBLIC KEY" or a "CERTIFICATE".
func loadPublicKey(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read public key: %w", err)
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("auth: %s: no PEM public key (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", path)
		}
		var key any
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("auth: %s: parse %s: %w", path, block.Type, err)
		}
		if algsForKey(key) == nil {
			return nil, fmt.Errorf("auth: %s: unsupported key type %T (want RSA, ECDSA P-256/384/521 or Ed25519)", path, key)
		}
		return key, nil
	}
}

// tokenClaims is the JSON shape of a token. It is lenient where a strange
// value does no harm (optional display fields) and strict where it matters
// (ids and project lists make the token malformed when mistyped).
type tokenClaims struct {
	jwt.RegisteredClaims
	Sub      idString  `json:"sub"` // shadows RegisteredClaims.Subject to accept numeric ids
	UserID   idString  `json:"userId"`
	Name     optString `json:"name"`
	Email    optString `json:"email"`
	Role     optString `json:"role"`
	Projects []string  `json:"projects"`
}

// idString is a JSON string or number, kept as text.
type idString string

func (s *idString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		*s = idString(str)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return errors.New("id claim is neither a string nor a number")
	}
	*s = idString(n.String())
	return nil
}

// optString is a JSON string; any other value reads as "".
type optString string

func (s *optString) UnmarshalJSON(b []byte) error {
	var str string
	if json.Unmarshal(b, &str) == nil {
		*s = optString(str)
	}
	return nil
}

// Mint signs an HS256 token for c with secret. The user id goes in both sub
// and userId; exp is now+ttl, or absent when ttl <= 0. c.ExpiresAt is ignored.
func Mint(secret []byte, c Claims, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: mint: empty secret")
	}
	if c.UserID == "" {
		return "", errors.New("auth: mint: no user id")
	}
	now := time.Now()
	mc := jwt.MapClaims{
		"sub":    c.UserID,
		"userId": c.UserID,
		"iat":    now.Unix(),
	}
	if ttl > 0 {
		mc["exp"] = now.Add(ttl).Unix()
	}
	if c.Name != "" {
		mc["name"] = c.Name
	}
	if c.Email != "" {
		mc["email"] = c.Email
	}
	if c.Role != "" {
		mc["role"] = c.Role
	}
	if len(c.Projects) > 0 {
		mc["projects"] = c.Projects
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, mc).SignedString(secret)
}

// TokenFromRequest returns the token of r: TokenFromHeader, else the "token"
// query parameter, else "".
func TokenFromRequest(r *http.Request) string {
	if t := TokenFromHeader(r); t != "" {
		return t
	}
	return strings.TrimSpace(r.URL.Query().Get("token"))
}

// TokenFromHeader returns the token of r's "Authorization: Bearer <t>"
// header (scheme case-insensitive), else "": the API takes no other.
func TokenFromHeader(r *http.Request) string {
	if h := strings.TrimSpace(r.Header.Get("Authorization")); h != "" {
		scheme, t, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(t)
		}
	}
	return ""
}
