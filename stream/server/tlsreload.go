package server

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// certReloader serves a certificate from PEM files and re-reads them when
// either file's modification time or size changes, so that a renewed
// certificate is used without a restart. A pair that fails to load keeps
// the previous one in service.
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// certCheckEvery bounds how often a handshake looks at the files.
const certCheckEvery = time.Second

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// load reads the pair. Called with r.mu held, or before r is shared.
func (r *certReloader) load() error {
	cs, err := stampOf(r.certFile)
	if err != nil {
		return fmt.Errorf("tls_cert: %w", err)
	}
	ks, err := stampOf(r.keyFile)
	if err != nil {
		return fmt.Errorf("tls_key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tls_cert/tls_key: %w", err)
	}
	r.cert, r.stamp = &cert, [2]fileStamp{cs, ks}
	return nil
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= certCheckEvery {
		r.checked = now
		cs, cerr := stampOf(r.certFile)
		ks, kerr := stampOf(r.keyFile)
		if cerr == nil && kerr == nil && [2]fileStamp{cs, ks} != r.stamp {
			_ = r.load() // on failure (a half-written pair) keep the old one
		}
	}
	return r.cert, nil
}

func (r *certReloader) config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.getCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}
