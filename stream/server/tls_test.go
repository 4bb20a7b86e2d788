package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// common name to certFile and keyFile, and returns it.
func writeCert(t *testing.T, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Write then rename, as a certificate renewal does.
	for _, f := range []struct {
		path string
		blk  *pem.Block
	}{{keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}}, {certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.blk), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// TestTLSServesAndReloads: with tls_cert/tls_key the server speaks HTTPS
// and WSS, and a certificate replaced on disk is served to new
// connections without a restart.
func TestTLSServesAndReloads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCert(t, certFile, keyFile, "first")
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.TLSCertFile, sc.TLSKeyFile = certFile, keyFile
	})
	client := func(want *x509.Certificate) *http.Client {
		pool := x509.NewCertPool()
		pool.AddCert(want)
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	}
	hc := client(first)
	resp, err := hc.Get("https://" + e.addr + "/healthz")
	if err != nil {
		t.Fatalf("HTTPS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("HTTPS /healthz: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "wss://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("WSS: %v", err)
	}
	_, welcome, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("WSS read: %v", err)
	}
	t.Logf("over wss: %s", welcome)
	_ = conn.CloseNow()
	hc.CloseIdleConnections()

	second := writeCert(t, certFile, keyFile, "second")
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		c := client(second)
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + e.addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "second" {
			return errorf("served %q", cn)
		}
		return nil
	})
	// Plain HTTP on the TLS port gets nothing useful.
	if resp, err := e.http.Get(e.url("/healthz")); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP answered on the TLS listener")
		}
	}
}
