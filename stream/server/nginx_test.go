package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// startNginx runs Debian's nginx in the foreground with deploy/nginx.conf
// in front of upstream (host:port), on a free loopback port, and returns
// that address. It skips the test when nginx is not installed, unless
// TICKSTREAM_NGINX_TESTS=1 (CI) makes it mandatory.
func startNginx(t *testing.T, upstream string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("TICKSTREAM_NGINX_TESTS") == "1" {
				t.Fatal("nginx is not installed and TICKSTREAM_NGINX_TESTS=1")
			}
			t.Skip("nginx is not installed (apt-get install nginx-light runs this test)")
		}
	}
	sample, err := os.ReadFile("../../deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := string(sample)
	for old, repl := range map[string]string{"server 127.0.0.1:8080;": "server " + upstream + ";", "listen 80;": "listen " + addr + ";"} {
		if !strings.Contains(conf, old) {
			t.Fatalf("deploy/nginx.conf has no %q to point at the test server", old)
		}
		conf = strings.Replace(conf, old, repl, 1)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tickstream.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/tickstream.conf;
}
`, dir)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output: %s\nerror.log: %s", out, log)
		}
	})
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-exited:
			exited <- err
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v: %s %s", err, out, log)
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	return addr
}

// TestNginxSampleConfig: WebSocket and SSE stream through deploy/nginx.conf
// unbuffered (each update and heartbeat arrives while the stream is open),
// and publishing from the machine itself goes through.
func TestNginxSampleConfig(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.Heartbeat = 500 * time.Millisecond
		sc.SendBufferBytes = -1
	})
	proxy := startNginx(t, e.addr)
	base := "http://" + proxy
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz through nginx: %d", resp.StatusCode)
	}

	// WebSocket, with the browser's Origin of the proxied host.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+proxy+"/ws", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {base}}})
	if err != nil {
		t.Fatalf("WebSocket through nginx: %v", err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","id":1,"topics":["NG"],"throttle_ms":0}`)); err != nil {
		t.Fatal(err)
	}
	// SSE.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/sse?topics=NG&throttle_ms=0", nil)
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	if sresp.StatusCode != 200 || sresp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE through nginx: %d %v", sresp.StatusCode, sresp.Header)
	}
	sse := bufio.NewReader(sresp.Body)
	readSSE := func(want string) {
		t.Helper()
		for {
			line, err := sse.ReadString('\n')
			if err != nil {
				t.Fatalf("SSE through nginx ended waiting for %q: %v", want, err)
			}
			if strings.HasPrefix(line, want) {
				return
			}
		}
	}
	readSSE("event: welcome")
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 2 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
	// Publish through nginx, from this machine.
	for i := 1; i <= 3; i++ {
		presp, err := http.Post(base+"/api/publish", "application/json", strings.NewReader(`{"topic":"NG","price":`+strconv.Itoa(i)+`}`))
		if err != nil {
			t.Fatal(err)
		}
		presp.Body.Close()
		if presp.StatusCode != 200 {
			t.Fatalf("publish through nginx: %d", presp.StatusCode)
		}
		readSSE("event: update")
		for {
			_, fr, err := ws.Read(ctx)
			if err != nil {
				t.Fatalf("WebSocket through nginx: %v", err)
			}
			if strings.Contains(string(fr), `"type":"update"`) {
				break
			}
		}
	}
	readSSE(": hb") // heartbeats are not held back either
}
