// Package e2e holds the end-to-end tests: they run the real binary, built
// once by TestMain from the module root with the race detector, and talk to
// it the way clients do (HTTP, WebSocket, SSE), with Postgres, Chromium and
// nginx where a test needs them. The package has no code besides its tests.
//
// The tests, by subject: ws_test.go, sse_test.go, api_test.go (the HTTP API
// and the token command), cli_test.go (help, version, error lines, the
// token command embedded mode prints; runBin), apirules_test.go (what
// every API request passes: origin, header token, JSON; METRICS_TOKEN;
// unauthenticated counts),
// deadline_test.go (the 10 s for a request to arrive, connections per
// address), pg_test.go (Postgres, several instances), pg_users_test.go
// (deleted users), presence_test.go (who is online), hangup_test.go (a
// client's close noticed within 1 s, on either transport),
// shutdown_test.go, compression_test.go, browser_test.go (web/client.js in
// Chromium; its helpers newBrowser, newTab, startTestClient,
// browserUntil...), browser_presence_test.go (presence in client.js and the
// demo page), readme_test.go (the README's quickstarts, embedded and
// Postgres, run as written), proxy_test.go (behind nginx), deploy_test.go
// (deploy/nginx.conf itself before three instances: kill and rolling
// restart lose nothing; its wire-level resuming clients, wireClient),
// deploy_files_test.go (the Compose file, nginx.conf, the Dockerfile and
// the binary agree) and monitoring_test.go (every metric deploy/'s
// dashboard and alert rules query is exported; the dashboard's queries
// pass promtool). The helpers, by concern:
//
//	server_test.go     TestMain (the build), startServer, stop, signal
//	wsclient_test.go   the WebSocket client: dialWS and its options, read, expect, call...
//	sseclient_test.go  the SSE client: openSSE, read, expectEvents...
//	http_test.go       request, getJSON, doJSON(Headers), publish, metric
//	tokens_test.go     userToken, serviceToken, expiredToken, rawToken...
//	messages_test.go   dataOf, errorCode, ackIs: messages of either transport
//	database_test.go   newPGEnv: a test's own database and servers on it
//	wait_test.go       waitTimeout and eventually
//	apispec_test.go    docs/asyncapi.yaml and docs/openapi.yaml, loaded once: every
//	                   message the WebSocket reader and the SSE parser receive,
//	                   and every response of request(Headers), publish, metric
//	                   and the /ws handshake, is validated; a mismatch fails
//	                   the test (apispec_check_test.go tests the validation, and
//	                   the documents' own structure, openapi.yaml with kin-openapi);
//	                   tests on raw sockets (rawRequest, dialRawWS, the bench)
//	                   and in Chromium bypass these helpers and are not validated
//
// How to use them in a new test:
//
//	s := startServer(t, "RATE_LIMIT_MAX_EVENTS=5")   // KEY=VALUE overrides; PORT=0, fixed JWT_SECRET, no DATABASE_URL
//	d := newPGEnv(t); s2 := d.start(t)                // Postgres mode; start several for multi-instance tests
//	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Minute)
//	svc := s.serviceToken(t)
//	c := dialWS(t, s, tok)                            // WebSocket client (coder/websocket), closed in t.Cleanup
//	c.call(t, "join_project", "p1")                    // send with an ack, return the reply (error on a mismatch)
//	seq := publish(t, s, svc, "p1", "story_uploaded", map[string]any{"storyId": "s1"})
//	m := c.expect(t, "story_uploaded")                 // read until that event (bounded)
//	sc := openSSE(t, s, "/sse?projects=p1", tok, nil)  // SSE stream, read by a goroutine
//	status, body := s.getJSON(t, "/api/websocket/stats", svc)
//	resp := s.request(t, "GET", "/sse?projects=p1", tok, nil)  // raw *http.Response (SSE streams, headers)
//	eventually(t, 5*time.Second, "no connection left", func() bool { ... })
//
// s.URL is the http base URL (http://127.0.0.1:PORT), s.WSURL the /ws URL,
// s.Secret the JWT secret. The server's stderr is kept and dumped when the
// test fails; a data race reported by the server fails the test. The server
// is stopped in t.Cleanup (SIGTERM, then SIGKILL after 10 s); s.stop(t)
// stops it earlier and returns its exit code.
//
// Every wait is bounded (waitTimeout by default): tests wait for an event,
// never sleep in place of waiting for one.
//
// SAGAPUSH_TEST_BIN=/path/to/binary skips the build (the binary must be built
// from this tree, preferably with -race). The build is plain `go build -race
// -buildvcs=auto` of the module's root package, so GOFLAGS (build tags, say)
// passes through.
package e2e
