package server

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAcceptedSocketsGetUserTimeout: every accepted socket carries
// TCP_USER_TIMEOUT, so that a peer gone without a FIN (half-open) fails
// the next heartbeat write within DeadPeerTimeout instead of ~15 minutes
// of retransmissions. (Loopback cannot lose packets, so the kernel's
// timer itself is not exercised here.)
func TestAcceptedSocketsGetUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sl := sockoptListener{Listener: ln, sendBuf: 64 << 10, userTimeout: 1500 * time.Millisecond}
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	_ = raw.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if gerr != nil || got != 1500 {
		t.Fatalf("TCP_USER_TIMEOUT = %d (%v), want 1500 ms", got, gerr)
	}
}
