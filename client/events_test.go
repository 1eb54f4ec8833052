package client

import (
	"fmt"
	"testing"
)

// BenchmarkHandle measures the client's cost per domain event, from the
// received bytes to the OnEvent handler (decode, dedupe, delivery).
func BenchmarkHandle(b *testing.B) {
	var n int
	c, err := New(Options{URL: "http://127.0.0.1:1", Token: "t", OnEvent: func(Event) { n++ }})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	src := &wsConn{}
	c.cur = src
	c.projects["p1"] = &project{hasSeq: true}
	frames := make([][]byte, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % len(frames)
		frames[j] = fmt.Appendf(frames[j][:0], `{"event":"story_uploaded","projectId":"p1","seq":%d,"ts":1795682291658,"data":{"story":{"id":"s1","projectId":"p1","title":"How Grandpa met Grandma","status":"processing"}}}`, i+1)
		c.handle(frames[j], src, "")
	}
	if n != b.N {
		b.Fatalf("%d events for %d frames", n, b.N)
	}
}
