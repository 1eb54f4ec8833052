package e2e

// HTTP to a test server: requests with a token and a JSON body, JSON
// answers, publishing events as the Saga backend does, and /metrics.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// request sends an HTTP request to the server with an optional bearer token
// and JSON body (a string or []byte is sent as is). The response headers must
// come within waitTimeout; the body stays readable until the test ends (an
// SSE stream, say). The caller closes the body.
func (s *testServer) request(t testing.TB, method, path, token string, body any) *http.Response {
	t.Helper()
	return s.requestHeaders(t, method, path, token, body, nil)
}

// requestHeaders is request with extra headers.
func (s *testServer) requestHeaders(t testing.TB, method, path, token string, body any, h http.Header) *http.Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	timer := time.AfterFunc(waitTimeout, cancel)
	resp, err := http.DefaultClient.Do(req)
	timer.Stop()
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	validateResponse(t, method, path, resp, cancel)
	return resp
}

// validateResponse checks a response against docs/openapi.yaml. A body
// that ends (anything but an event stream) is read whole first, within
// waitTimeout, and put back for the caller.
func validateResponse(t testing.TB, method, path string, resp *http.Response, cancel context.CancelFunc) {
	t.Helper()
	var body []byte
	if mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";"); mt != "text/event-stream" {
		timer := time.AfterFunc(waitTimeout, cancel)
		b, err := io.ReadAll(resp.Body)
		timer.Stop()
		resp.Body.Close()
		if err != nil { // the caller meets the same error
			resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(b), errReader{err}))
			return
		}
		body = b
		resp.Body = io.NopCloser(bytes.NewReader(b))
	}
	if msg := checkHTTP(method, path, resp, body); msg != "" {
		t.Errorf("%s", msg)
	}
}

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// readBody reads a whole response body within waitTimeout and closes it.
func readBody(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read body: %v", r.err)
		}
		return r.b
	case <-time.After(waitTimeout):
		t.Fatalf("body not read within %v", waitTimeout)
		return nil
	}
}

// doJSON sends a request and decodes a JSON object answer.
func (s *testServer) doJSON(t testing.TB, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	return s.doJSONHeaders(t, method, path, token, body, nil)
}

// doJSONHeaders is doJSON with extra headers.
func (s *testServer) doJSONHeaders(t testing.TB, method, path, token string, body any, h http.Header) (int, map[string]any) {
	t.Helper()
	resp := s.requestHeaders(t, method, path, token, body, h)
	b := readBody(t, resp)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: status %d, body is not a JSON object: %q", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

func (s *testServer) getJSON(t testing.TB, path, token string) (int, map[string]any) {
	t.Helper()
	return s.doJSON(t, "GET", path, token, nil)
}

// publish posts a domain event as the backend does and returns its seq.
func publish(t testing.TB, s *testServer, serviceToken, projectID, event string, data any) int64 {
	t.Helper()
	seq, err := publishErr(s, serviceToken, projectID, event, data)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// publishErr is publish for goroutines other than the test's.
func publishErr(s *testServer, serviceToken, projectID, event string, data any) (int64, error) {
	b, err := json.Marshal(map[string]any{"projectId": projectID, "event": event, "data": data})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.URL+"/api/events", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+serviceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("publish %s to %s: %w", event, projectID, err)
	}
	defer resp.Body.Close()
	var body struct {
		ProjectID string `json:"projectId"`
		Seq       *int64 `json:"seq"`
	}
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("publish %s to %s: %w", event, projectID, err)
	}
	if msg := checkHTTP("POST", "/api/events", resp, rb); msg != "" {
		return 0, fmt.Errorf("publish %s to %s: %s", event, projectID, msg)
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(rb, &body) != nil || body.Seq == nil || body.ProjectID != projectID {
		return 0, fmt.Errorf("publish %s to %s: status %d, body %s", event, projectID, resp.StatusCode, rb)
	}
	return *body.Seq, nil
}

// metric returns the value of the first sample of /metrics whose line starts
// with prefix (a metric name, optionally with labels), or -1 when absent.
func (s *testServer) metric(t testing.TB, prefix string) float64 {
	t.Helper()
	return s.metricWith(t, http.DefaultClient, prefix)
}

// rawRequest writes req, a whole HTTP/1.1 request, on a socket of its own
// and reads the response's head. The socket is closed when the test ends;
// its deadline is waitTimeout from now.
func (s *testServer) rawRequest(t testing.TB, req string) (net.Conn, *bufio.Reader, *http.Response, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	return conn, br, resp, err
}

// noKeepAlive closes its connection after each request.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// metricWith is metric through the given client.
func (s *testServer) metricWith(t testing.TB, client *http.Client, prefix string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", s.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	body := readBody(t, resp)
	if msg := checkHTTP("GET", "/metrics", resp, body); msg != "" {
		t.Errorf("%s", msg)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) && (len(line) > len(prefix) && (line[len(prefix)] == ' ' || line[len(prefix)] == '{')) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
