package app_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/feedtest"
)

// pprof_addr serves the profiles on its own loopback listener, and the
// main listener never serves them.
func TestPprofAddrServesProfilesOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // RunListener listens there itself
	a := startApp(t, "", "--pprof-addr", addr)

	var body string
	feedtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := httpClient.Get("http://" + addr + "/debug/pprof/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return nil
	})
	for _, p := range []string{"heap", "goroutine", "block", "mutex", "allocs"} {
		if !strings.Contains(body, p) {
			t.Errorf("/debug/pprof/ index lacks %s", p)
		}
	}
	resp, err := httpClient.Get(a.base + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("the main listener serves /debug/pprof/")
	}
	a.stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the profiler still listens after shutdown")
	}
}
