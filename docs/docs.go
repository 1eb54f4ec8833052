// Package docs holds the machine-readable API of Saga push: asyncapi.yaml
// (AsyncAPI 3.0, the WebSocket and SSE messages) and openapi.yaml (OpenAPI
// 3.1, the HTTP endpoints). The server serves them at /api/asyncapi.yaml and
// /api/openapi.yaml, and the end-to-end tests validate every message and
// HTTP response they receive against them. protocol.md, beside them, is the
// prose reference.
package docs

import _ "embed"

// AsyncAPI is docs/asyncapi.yaml.
//
//go:embed asyncapi.yaml
var AsyncAPI []byte

// OpenAPI is docs/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
