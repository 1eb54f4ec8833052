// Package web holds the browser client and the demo page, embedded in the binary.
package web

import "embed"

// Files holds client.js (the browser client, an ES module), client.d.ts (its TypeScript
// declarations) and index.html (the demo page served at /).
//
//go:embed client.js client.d.ts index.html
var Files embed.FS
