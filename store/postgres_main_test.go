package store_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a closed store left a goroutine behind (a
// listener, a worker, a pool opener).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
