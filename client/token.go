package client

import (
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// claims reads the iat and exp claims of a JWT without verifying it.
func claims(token string) (iat, exp time.Time, hasIat, hasExp bool) {
	parts := strings.Split(token, ".")
	if len(parts) < 2 {
		return
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return
	}
	var c struct {
		Iat *float64 `json:"iat"`
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil {
		return
	}
	if c.Iat != nil {
		iat, hasIat = time.UnixMilli(int64(*c.Iat*1000)), true
	}
	if c.Exp != nil {
		exp, hasExp = time.UnixMilli(int64(*c.Exp*1000)), true
	}
	return
}

// tokenExpiry returns the token's exp (ok false when it has none).
func tokenExpiry(token string) (time.Time, bool) {
	_, exp, _, ok := claims(token)
	return exp, ok
}

// refreshDelay is how long to wait before asking for a new token: the
// refresh happens min(30 s, 10% of the token's lifetime) before exp. The
// lifetime runs from iat, or from now when the token has none. ok is false
// for a token without exp.
func refreshDelay(token string, now time.Time) (time.Duration, bool) {
	iat, exp, hasIat, hasExp := claims(token)
	if !hasExp {
		return 0, false
	}
	if !hasIat {
		iat = now
	}
	lead := min(30*time.Second, max(0, exp.Sub(iat))/10)
	return max(0, exp.Sub(now)-lead), true
}

// backoff is exponential backoff with full jitter: a random delay in
// [0, min(max, base*2^attempt)).
func backoff(attempt int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 0; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	return jitter(min(d, ceiling))
}

// jitter is a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
