package client

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

func jwtWith(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"HS256"}`)) + "." + enc([]byte(payload)) + ".sig"
}

func TestTokenTimes(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		payload string
		want    time.Duration
		ok      bool
	}{
		{fmt.Sprintf(`{"iat":%d,"exp":%d}`, now.Unix(), now.Unix()+3600), time.Hour - 30*time.Second, true},
		{fmt.Sprintf(`{"iat":%d,"exp":%d}`, now.Unix(), now.Unix()+100), 90 * time.Second, true},
		{fmt.Sprintf(`{"exp":%d}`, now.Unix()+100), 90 * time.Second, true},
		{fmt.Sprintf(`{"exp":%d}`, now.Unix()-100), 0, true},
		{`{"sub":"x"}`, 0, false},
	} {
		d, ok := refreshDelay(jwtWith(tc.payload), now)
		if d != tc.want || ok != tc.ok {
			t.Errorf("%s: %v %v, want %v %v", tc.payload, d, ok, tc.want, tc.ok)
		}
	}
	if _, ok := tokenExpiry("not a jwt"); ok {
		t.Error("tokenExpiry of garbage")
	}
	if exp, ok := tokenExpiry(jwtWith(`{"exp":1234}`)); !ok || exp.Unix() != 1234 {
		t.Errorf("tokenExpiry: %v %v", exp, ok)
	}
}
