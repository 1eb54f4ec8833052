package hub

import (
	"testing"
	"unsafe"
)

// The fan-out's fields share the first cache line only if allocations are
// 64-byte aligned, which a size that is a multiple of 64 gives.
func TestConnLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layout is tuned for 64-bit platforms")
	}
	if n := unsafe.Sizeof(Conn{}); n%64 != 0 {
		t.Fatalf("Conn is %d bytes, not a multiple of 64", n)
	}
	if end := unsafe.Offsetof(Conn{}.out) + unsafe.Sizeof(Conn{}.out); end > 64 {
		t.Fatalf("the fan-out's fields end at byte %d, past the first line", end)
	}
}
