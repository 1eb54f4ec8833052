//go:build !windows

package e2e

// sysFD is a RawConn.Control descriptor as package syscall takes it.
func sysFD(fd uintptr) int { return int(fd) }
