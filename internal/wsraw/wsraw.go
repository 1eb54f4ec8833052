// Package wsraw reads and writes single WebSocket frames (RFC 6455 5.2) as
// bytes: what a client library hides from a test (RSV1, masking, opcodes,
// fragments) and what the benchmark's epoll reader parses in place. Its one
// job is that frame codec; only tests and the bench use it (the server's own
// frames are written by transports).
package wsraw

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
)

// Opcodes (RFC 6455 5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xa
)

// Bits of a frame's first byte.
const (
	FIN  = 0x80
	RSV1 = 0x40 // permessage-deflate compressed the payload (RFC 7692)
	// RSVBits are RSV1, RSV2 and RSV3.
	RSVBits = 0x70
)

// MaxHeaderLen is the longest frame header: two bytes, a 64-bit length and
// a mask key.
const MaxHeaderLen = 14

// MaxReadLen bounds the payload ReadFrame allocates: a corrupt length must
// not make a test allocate gigabytes.
const MaxReadLen = 64 << 20

// ErrTooBig is ReadFrame's error for a payload over MaxReadLen.
var ErrTooBig = errors.New("wsraw: frame longer than MaxReadLen")

// Header is a frame header. It is all scalars, so that ParseHeader returns
// it in registers.
type Header struct {
	B0     byte // the first byte: FIN, the RSV bits and the opcode
	Masked bool
	Key    uint32 // the mask key when Masked, its bytes in wire order
	Len    uint64 // the payload's length
}

// Fin reports FIN: the frame ends its message.
func (h Header) Fin() bool { return h.B0&FIN != 0 }

// Op is the opcode.
func (h Header) Op() byte { return h.B0 & 0x0f }

// RSV is the RSV bits as they stand in the first byte (RSV1 is 0x40).
func (h Header) RSV() byte { return h.B0 & RSVBits }

// Compressed reports RSV1: the payload is permessage-deflate compressed.
func (h Header) Compressed() bool { return h.B0&RSV1 != 0 }

// ParseHeader parses the frame header at the start of b and returns it and
// its length n (mask key included); the payload follows it. While b holds
// only part of the header, n is more than len(b): the length b must reach
// to tell more (2, then the whole header's). It does not judge the frame: a
// server's must not be masked, a client's must, control frames are
// short... that is the caller's to check. The bench's reader parses every
// frame it receives with it, in place: it neither allocates nor copies.
func ParseHeader(b []byte) (h Header, n int) {
	if len(b) < 2 {
		return h, 2
	}
	b0, b1 := b[0], b[1]
	// Unmasked with a 7- or 16-bit length, as servers send most frames: a
	// short path.
	if b1 < 126 {
		return Header{B0: b0, Len: uint64(b1)}, 2
	}
	if b1 == 126 && len(b) >= 4 {
		return Header{B0: b0, Len: uint64(b[2])<<8 | uint64(b[3])}, 4
	}
	key := 0 // the mask key's length
	if b1&0x80 != 0 {
		key = 4
	}
	switch b1 & 0x7f {
	case 126:
		if len(b) < 4+key {
			return h, 4 + key
		}
		h.Len, n = uint64(binary.BigEndian.Uint16(b[2:4])), 4
	case 127:
		if len(b) < 10+key {
			return h, 10 + key
		}
		h.Len, n = binary.BigEndian.Uint64(b[2:10]), 10
	default:
		if len(b) < 2+key {
			return h, 2 + key
		}
		h.Len, n = uint64(b1&0x7f), 2
	}
	h.B0 = b0
	if key != 0 {
		h.Masked, h.Key = true, binary.BigEndian.Uint32(b[n:n+4])
		n += 4
	}
	return h, n
}

// AppendFrame appends an unmasked frame, as a server sends: b0 is its first
// byte (FIN, RSV bits and opcode as sent), the length takes the shortest
// form.
func AppendFrame(dst []byte, b0 byte, payload []byte) []byte {
	dst = appendHeader(dst, b0, 0, len(payload))
	return append(dst, payload...)
}

// AppendMasked appends a final client frame of opcode op, masked with a
// fresh random key as a client must (RFC 6455 5.3). The key is never zero,
// so a payload of four bytes or more never goes out as it is.
func AppendMasked(dst []byte, op byte, payload []byte) []byte {
	dst = appendHeader(dst, FIN|op, 0x80, len(payload))
	key := rand.Uint32() | 1
	dst = binary.BigEndian.AppendUint32(dst, key)
	start := len(dst)
	dst = append(dst, payload...)
	Mask(key, dst[start:])
	return dst
}

func appendHeader(dst []byte, b0, mask byte, n int) []byte {
	switch {
	case n < 126:
		return append(dst, b0, mask|byte(n))
	case n < 1<<16:
		return append(dst, b0, mask|126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, b0, mask|127), uint64(n))
	}
}

// Mask masks or unmasks b in place with key (the same operation).
func Mask(key uint32, b []byte) {
	k := [4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}
	for i := range b {
		b[i] ^= k[i&3]
	}
}

// ReadFrame reads one frame from r and returns its header and its payload,
// unmasked when the frame was masked. An io.EOF before the first byte comes
// back as is; one inside the frame as io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (Header, []byte, error) {
	var b [MaxHeaderLen]byte
	if _, err := io.ReadFull(r, b[:2]); err != nil {
		return Header{}, nil, err
	}
	h, n := ParseHeader(b[:2])
	if n > 2 {
		if _, err := io.ReadFull(r, b[2:n]); err != nil {
			return Header{}, nil, noEOF(err)
		}
		h, _ = ParseHeader(b[:n])
	}
	if h.Len > MaxReadLen {
		return h, nil, ErrTooBig
	}
	payload := make([]byte, h.Len)
	if _, err := io.ReadFull(r, payload); err != nil {
		return h, nil, noEOF(err)
	}
	if h.Masked {
		Mask(h.Key, payload)
	}
	return h, payload, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// CloseCode returns the status code at the start of a close frame's
// payload, or 1005 (RFC 6455 7.1.5: no status) when it has none.
func CloseCode(payload []byte) int {
	if len(payload) < 2 {
		return 1005
	}
	return int(binary.BigEndian.Uint16(payload))
}
