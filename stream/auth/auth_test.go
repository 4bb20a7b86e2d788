package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/auth/authtest"
)

var secret = []byte("a test secret of thirty-two bytes!")

func claims(exp time.Duration, extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(exp).Unix(), "read": []string{"crypto.*", "BTC-USD"}}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func reason(t *testing.T, err error) string {
	t.Helper()
	var ae *auth.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an *auth.Error", err)
	}
	return ae.Reason
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemOf(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestVerifyHS256(t *testing.T) {
	a, err := auth.New(auth.Config{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Verify(authtest.HS256(secret, claims(time.Hour, jwt.MapClaims{"publish": []string{"sim.*"}})))
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject() != "alice" || !c.CanRead("crypto.ETH") || !c.CanRead("BTC-USD") || c.CanRead("ETH-USD") {
		t.Errorf("claims %+v: wrong read rights", c)
	}
	if !c.CanPublish("sim.X") || c.CanPublish("BTC-USD") {
		t.Errorf("claims %+v: wrong publish rights", c)
	}
	if c.Expiry().Before(time.Now()) {
		t.Errorf("expiry %v is in the past", c.Expiry())
	}
}

func TestVerifyRefusals(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pubPEM := pemOf(t, &rsaKey.PublicKey)
	a, err := auth.New(auth.Config{PublicKeyFile: writeFile(t, dir, "pub.pem", pubPEM)})
	if err != nil {
		t.Fatal(err)
	}
	good := authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(time.Hour, nil))
	if _, err := a.Verify(good); err != nil {
		t.Fatalf("a good RS256 token: %v", err)
	}
	cases := []struct {
		name, token, reason string
	}{
		{"missing", "", auth.ReasonMissing},
		{"garbage", "not.a.jwt", auth.ReasonMalformed},
		{"none", authtest.None(claims(time.Hour, nil)), auth.ReasonAlgorithm},
		// HS/RS confusion: an HS256 token whose HMAC key is the server's
		// RSA public key in PEM, as an attacker who knows it would sign.
		{"hs-rs-confusion", authtest.HS256(pubPEM, claims(time.Hour, nil)), auth.ReasonAlgorithm},
		{"unknown-alg", authtest.WithHeader(good, map[string]any{"alg": "XX999", "typ": "JWT"}), auth.ReasonAlgorithm},
		{"es256-without-ec-key", authtest.Sign(jwt.SigningMethodES256, mustEC(t), claims(time.Hour, nil)), auth.ReasonAlgorithm},
		{"forged", authtest.Sign(jwt.SigningMethodRS256, otherRSA, claims(time.Hour, nil)), auth.ReasonSignature},
		{"tampered", authtest.Tamper(good, jwt.MapClaims{"read": []string{"*"}, "exp": time.Now().Add(time.Hour).Unix()}), auth.ReasonSignature},
		{"expired", authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(-time.Minute, nil)), auth.ReasonExpired},
		{"not-yet-valid", authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(time.Hour, jwt.MapClaims{"nbf": time.Now().Add(10 * time.Minute).Unix()})), auth.ReasonNotYetValid},
		{"no-exp", authtest.Sign(jwt.SigningMethodRS256, rsaKey, jwt.MapClaims{"sub": "x"}), auth.ReasonClaims},
		{"bad-read", authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(time.Hour, jwt.MapClaims{"read": []string{"a b"}})), auth.ReasonClaims},
		{"bad-publish", authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(time.Hour, jwt.MapClaims{"publish": "yes"})), auth.ReasonClaims},
		// A forged signature on an expired token is a forgery first.
		{"forged-expired", authtest.Sign(jwt.SigningMethodRS256, otherRSA, claims(-time.Minute, nil)), auth.ReasonSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := a.Verify(tc.token)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if got := reason(t, err); got != tc.reason {
				t.Errorf("reason %s (%v), want %s", got, err, tc.reason)
			}
		})
	}
}

// With both an HS256 secret and RSA keys, an HS256 token is checked
// against the secret only, never against the public key's bytes.
func TestHSRSConfusionWithBothKeys(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pemOf(t, &rsaKey.PublicKey)
	a, err := auth.New(auth.Config{HS256Secret: secret, PublicKeyFile: writeFile(t, t.TempDir(), "pub.pem", pubPEM)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Verify(authtest.HS256(pubPEM, claims(time.Hour, nil)))
	if got := reason(t, err); got != auth.ReasonSignature {
		t.Errorf("reason %s, want %s", got, auth.ReasonSignature)
	}
	if _, err := a.Verify(authtest.HS256(secret, claims(time.Hour, nil))); err != nil {
		t.Errorf("HS256 with the secret: %v", err)
	}
	if _, err := a.Verify(authtest.Sign(jwt.SigningMethodRS256, rsaKey, claims(time.Hour, nil))); err != nil {
		t.Errorf("RS256: %v", err)
	}
}

func mustEC(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVerifyES256PEM(t *testing.T) {
	k := mustEC(t)
	a, err := auth.New(auth.Config{PublicKeyFile: writeFile(t, t.TempDir(), "ec.pem", pemOf(t, &k.PublicKey))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(authtest.Sign(jwt.SigningMethodES256, k, claims(time.Hour, nil))); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(authtest.Sign(jwt.SigningMethodES256, mustEC(t), claims(time.Hour, nil))); reason(t, err) != auth.ReasonSignature {
		t.Errorf("another EC key: %v", err)
	}
}

func jwksOf(t *testing.T, keys map[string]any) []byte {
	t.Helper()
	enc := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	var list []map[string]string
	for kid, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			list = append(list, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": enc(k.N.Bytes()), "e": enc(big.NewInt(int64(k.E)).Bytes())})
		case *ecdsa.PublicKey:
			raw, err := k.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			list = append(list, map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "x": enc(raw[1:33]), "y": enc(raw[33:])})
		}
	}
	b, err := json.Marshal(map[string]any{"keys": list})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJWKSReload(t *testing.T) {
	k1, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k2 := mustEC(t)
	dir := t.TempDir()
	path := writeFile(t, dir, "jwks.json", jwksOf(t, map[string]any{"one": &k1.PublicKey}))
	now := time.Now()
	clock := func() time.Time { return now }
	a, err := auth.New(auth.Config{JWKSFile: path, ReloadInterval: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t1 := authtest.SignKid(jwt.SigningMethodRS256, k1, "one", claims(time.Hour, nil))
	t2 := authtest.SignKid(jwt.SigningMethodES256, k2, "two", claims(time.Hour, nil))
	if _, err := a.Verify(t1); err != nil {
		t.Fatalf("key one: %v", err)
	}
	if _, err := a.Verify(t2); err == nil {
		t.Fatal("key two accepted before it is in the JWKS")
	}

	// Rotate: keys two and three replace key one. The file's mtime moves on (set
	// explicitly: a coarse file-system clock could leave it unchanged).
	k3, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "jwks.json", jwksOf(t, map[string]any{"two": &k2.PublicKey, "three": &k3.PublicKey}))
	if err := os.Chtimes(path, now.Add(time.Hour), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Within the interval the file is not looked at.
	if _, err := a.Verify(t1); err != nil {
		t.Fatalf("key one within the reload interval: %v", err)
	}
	now = now.Add(time.Minute)
	if _, err := a.Verify(t2); err != nil {
		t.Fatalf("key two after the reload: %v", err)
	}
	if _, err := a.Verify(t1); reason(t, err) != auth.ReasonSignature {
		t.Fatalf("key one after it left the JWKS: %v", err)
	}

	// A broken file keeps the keys in effect and says why.
	writeFile(t, dir, "jwks.json", []byte("{not json"))
	if err := os.Chtimes(path, now.Add(2*time.Hour), now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, err := a.Verify(t2); err != nil {
		t.Fatalf("key two after a broken reload: %v", err)
	}
	if a.ReloadError() == nil || !strings.Contains(a.ReloadError().Error(), "JWKS") {
		t.Errorf("ReloadError = %v, want the JWKS parse error", a.ReloadError())
	}
}

func TestHS256SecretFileReload(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "secret", []byte("the first secret, thirty-two bytes long\n"))
	a, err := auth.New(auth.Config{HS256SecretFile: path, ReloadInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(authtest.HS256([]byte("the first secret, thirty-two bytes long"), claims(time.Hour, nil))); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "secret", []byte("the second secret, also long enough, longer\n"))
	if _, err := a.Verify(authtest.HS256([]byte("the second secret, also long enough, longer"), claims(time.Hour, nil))); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}

func TestNewNeedsAKey(t *testing.T) {
	if _, err := auth.New(auth.Config{}); err == nil {
		t.Error("no key: accepted")
	}
	if _, err := auth.New(auth.Config{HS256Secret: []byte("short")}); err == nil {
		t.Error("a 5-byte HS256 secret: accepted")
	}
	if _, err := auth.New(auth.Config{JWKSFile: filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Error("missing JWKS file: accepted")
	}
}

func TestPatterns(t *testing.T) {
	c := &auth.Claims{Read: []string{"crypto.*", "BTC-USD"}, Publish: auth.PublishClaim{Patterns: []string{"*"}}}
	for topic, want := range map[string]bool{
		"crypto.BTC": true, "crypto.": true, "crypto": false, "BTC-USD": true, "BTC-USDT": false,
		"crypto.*": true, "crypto.B*": true, "cry*": true, "*": true, "BTC*": true, "ETH*": false,
	} {
		if got := c.CanRead(topic); got != want {
			t.Errorf("CanRead(%q) = %v, want %v", topic, got, want)
		}
	}
	if !c.CanPublish("anything") {
		t.Error(`publish ["*"] refuses a topic`)
	}
	var none auth.Claims
	if none.CanRead("x") || none.CanPublish("x") {
		t.Error("no claims allow something")
	}
	var p auth.PublishClaim
	for in, want := range map[string]bool{`true`: true, `false`: false, `["a.*"]`: false} {
		if err := json.Unmarshal([]byte(in), &p); err != nil {
			t.Fatal(err)
		}
		if got := (&auth.Claims{Publish: p}).CanPublish("b"); got != want {
			t.Errorf("publish %s: CanPublish(b) = %v", in, got)
		}
	}
}
