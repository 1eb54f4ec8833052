package e2e

import "syscall"

// sysFD is a RawConn.Control descriptor as package syscall takes it.
func sysFD(fd uintptr) syscall.Handle { return syscall.Handle(fd) }
