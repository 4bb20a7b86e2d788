//go:build !linux

package server

import (
	"net"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT does not exist; the
// heartbeat write still fails once TCP gives up.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
