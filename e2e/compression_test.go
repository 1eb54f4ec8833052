package e2e

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/saga-family/sagapush/internal/wsraw"
)

// rawWS is a minimal WebSocket client over a plain socket, for what client
// libraries hide: whether each server frame is compressed (RSV1).
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRawWS(t *testing.T, s *testServer, token, extensions string) (*rawWS, http.Header) {
	t.Helper()
	req := "GET /ws?token=" + token + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	if extensions != "" {
		req += "Sec-WebSocket-Extensions: " + extensions + "\r\n"
	}
	conn, br, resp, err := s.rawRequest(t, req+"\r\n")
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", err, resp)
	}
	return &rawWS{conn: conn, br: br}, resp.Header
}

// send writes one masked text frame (clients must mask).
func (w *rawWS) send(t *testing.T, text string) {
	t.Helper()
	if _, err := w.conn.Write(wsraw.AppendMasked(nil, wsraw.OpText, []byte(text))); err != nil {
		t.Fatal(err)
	}
}

// next reads one server frame: whether RSV1 (compressed) is set, and its
// payload as sent.
func (w *rawWS) next(t *testing.T) (compressed bool, payload []byte) {
	t.Helper()
	h, payload, err := wsraw.ReadFrame(w.br)
	if err != nil {
		t.Fatalf("frame: %v", err)
	}
	return h.Compressed(), payload
}

// Compression is used when the client offers permessage-deflate, and only
// for messages above WS_COMPRESS_ABOVE: small JSON goes out as is.
func TestWSCompressionAboveThreshold(t *testing.T) {
	t.Parallel()
	s := startServer(t, "WS_COMPRESS_ABOVE=1024")
	svc := s.serviceToken(t)
	w, h := dialRawWS(t, s, s.userToken(t, "u1", "p1"), "permessage-deflate; client_no_context_takeover; server_no_context_takeover")
	if !strings.Contains(h.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatalf("extension not negotiated: %q", h.Get("Sec-WebSocket-Extensions"))
	}
	w.send(t, `{"event":"join_project","data":"p1","ack":1}`)
	if c, p := w.next(t); c || !strings.Contains(string(p), "joined_project") {
		t.Fatalf("joined_project: compressed=%v %s", c, p)
	}
	publish(t, s, svc, "p1", "transcript_updated", map[string]any{"storyId": "s1", "transcript": "short"})
	if c, p := w.next(t); c || !strings.Contains(string(p), `"seq":1`) {
		t.Fatalf("a small event was compressed=%v: %s", c, p)
	}
	big := strings.Repeat("Grandma told the story of the war again. ", 200) // ~8 KiB
	publish(t, s, svc, "p1", "transcript_updated", map[string]any{"storyId": "s1", "transcript": big})
	c, p := w.next(t)
	if !c {
		t.Fatal("an 8 KiB event was not compressed")
	}
	if len(p) >= len(big)/2 {
		t.Fatalf("compressed payload %d bytes for %d of text", len(p), len(big))
	}

	// Without the offer nothing is compressed, however big.
	plain, h := dialRawWS(t, s, s.userToken(t, "u2", "p1"), "")
	if h.Get("Sec-WebSocket-Extensions") != "" {
		t.Fatalf("extension without an offer: %q", h.Get("Sec-WebSocket-Extensions"))
	}
	plain.send(t, `{"event":"join_project","data":{"projectId":"p1","since":1},"ack":1}`)
	plain.next(t) // joined_project
	if c, p := plain.next(t); c || !strings.Contains(string(p), big[:100]) {
		t.Fatalf("replayed big event without the extension: compressed=%v, %d bytes", c, len(p))
	}
}

// No token ever reaches a log line, at debug level, whatever path it took:
// accepted or refused, header, query or auth frame.
func TestNoTokenInLogs(t *testing.T) {
	t.Parallel()
	s := startServer(t, "LOG_LEVEL=debug")
	good := s.userToken(t, "u1", "p1")
	expired := s.expiredToken(t, "u1", "p1")
	bad := good[:len(good)-4] + "AAAA"
	for _, tok := range []string{good, expired, bad} {
		s.request(t, "GET", "/api/websocket/stats", tok, nil).Body.Close()
		s.request(t, "GET", "/sse?projects=p1&token="+tok, "", nil).Body.Close()
		resp, err := http.Get(s.WSURL[:len(s.WSURL)-3] + "/ws?token=" + tok) // a failed handshake
		if err == nil {
			validateResponse(t, "GET", "/ws", resp, func() {})
			resp.Body.Close()
		}
	}
	c := dialWS(t, s, "", withoutToken())
	c.authenticate(t, good)
	c.sendEvent(t, "auth", map[string]string{"token": bad}, 2)
	c.expectError(t, "UNAUTHORIZED")
	c.call(t, "ping", nil)
	s.stop(t)
	logs := s.stderr.String()
	if !strings.Contains(logs, "level=") {
		t.Fatal("no log lines captured")
	}
	for _, tok := range []string{good, expired, bad} {
		// Any long piece of a token would be a leak: its signature, its payload.
		parts := strings.Split(tok, ".")
		for _, p := range parts[1:] {
			if strings.Contains(logs, p[:min(len(p), 20)]) {
				t.Fatalf("a token piece %q... is in the logs", p[:20])
			}
		}
	}
}
