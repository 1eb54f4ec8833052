package e2e

// The protocol's JSON messages, whichever transport carried them (docs/protocol.md
// sections 4 and 7): acks, data objects, error codes.

import (
	"testing"
)

func ackIs(m map[string]any, ack int64) bool {
	v, ok := m["ack"].(float64)
	return ok && v == float64(ack)
}

// dataOf returns the message's data object.
func dataOf(t testing.TB, m map[string]any) map[string]any {
	t.Helper()
	d, ok := m["data"].(map[string]any)
	if !ok {
		t.Fatalf("message %v has no data object", m)
	}
	return d
}

// errorCode checks that m is an error message and returns its code.
func errorCode(t testing.TB, m map[string]any) string {
	t.Helper()
	if m["event"] != "error" {
		t.Fatalf("got %v, want an error", m)
	}
	d := dataOf(t, m)
	if msg, _ := d["message"].(string); msg == "" {
		t.Errorf("error %v has no message", m)
	}
	code, _ := d["code"].(string)
	return code
}
