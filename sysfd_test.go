//go:build !windows

package main

// sysFD is a RawConn.Control descriptor as package syscall takes it.
func sysFD(fd uintptr) int { return int(fd) }
