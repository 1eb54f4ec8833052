// Package protocol is the vocabulary of Saga push's contract with clients
// (docs/protocol.md): the client frames and how they are decoded, the server
// messages and how they are encoded, event names, error codes, close codes,
// the SSE cursor and what a valid id is. It is a leaf: every other package
// imports it, and no other package defines wire JSON.
package protocol
