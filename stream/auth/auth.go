// Package auth verifies the JWTs that clients present to tickstream and
// says what their holders may read and publish.
//
// A token is signed with HS256 (a shared secret) or RS256/ES256 (a private
// key whose public half the server holds, in a PEM file or a JWKS file).
// Its claims:
//
//	exp      expiry (required), Unix seconds
//	nbf      not before (optional)
//	sub      who holds it (optional; kept across a refresh)
//	read     topic patterns it may read: exact topics and prefixes ending
//	         in *, e.g. ["crypto.*","BTC-USD"]; "*" is everything
//	publish  true (every topic), false, or topic patterns like read
//
// Key files are checked for changes at most once per Config.ReloadInterval
// and reloaded when their modification time or size changes, so keys can
// be rotated without a restart.
package auth

import (
	"bytes"
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Reasons say why a token was refused. They are stable: clients and
// operators switch on them.
const (
	ReasonMissing     = "token_missing"       // no token was presented
	ReasonMalformed   = "token_malformed"     // not a JWT
	ReasonAlgorithm   = "token_algorithm"     // alg is none, unknown, or not one this server verifies
	ReasonSignature   = "token_signature"     // the signature does not verify (forged, or signed with another key)
	ReasonExpired     = "token_expired"       // exp has passed
	ReasonNotYetValid = "token_not_yet_valid" // nbf is in the future
	ReasonClaims      = "token_claims"        // exp missing, or read/publish malformed
)

// MinSecretBytes is the shortest HS256 secret accepted: RFC 7518 asks for
// a key at least as long as the hash (256 bits).
const MinSecretBytes = 32

// Error is a refused token.
type Error struct {
	Reason  string // one of the Reason constants
	Message string
}

func (e *Error) Error() string { return e.Reason + ": " + e.Message }

// Config configures an Authorizer. At least one key is required: the
// HS256 secret, a public key file, or a JWKS file.
type Config struct {
	// HS256Secret verifies HS256 tokens. HS256SecretFile is read instead
	// when set (surrounding whitespace is trimmed), and reloaded.
	HS256Secret     []byte
	HS256SecretFile string
	// PublicKeyFile holds PEM public keys (PUBLIC KEY, RSA PUBLIC KEY or
	// CERTIFICATE blocks): RSA keys verify RS256, P-256 keys ES256.
	PublicKeyFile string
	// JWKSFile holds a JSON Web Key Set of RSA and P-256 EC public keys.
	// A token with a kid is verified with the key of that kid only.
	JWKSFile string
	// ReloadInterval is how often at most the key files are checked for
	// changes. Zero value means 10 s; negative means at every Verify.
	ReloadInterval time.Duration
	// Leeway is the clock skew allowed on exp and nbf. Zero value means none.
	Leeway time.Duration
	// Now is the clock. Zero value means time.Now.
	Now func() time.Time
}

// keySet is the set of keys in effect.
type keySet struct {
	hs  []byte
	rsa []namedKey
	ec  []namedKey
}

type namedKey struct {
	kid string
	key any // *rsa.PublicKey or *ecdsa.PublicKey
}

// fileStamp identifies a version of a key file.
type fileStamp struct {
	mod  time.Time
	size int64
}

// Authorizer verifies tokens. It is safe for concurrent use.
type Authorizer struct {
	cfg    Config
	keys   atomic.Pointer[keySet]
	parser *jwt.Parser

	mu        sync.Mutex // guards the fields below: one reload at a time
	checked   time.Time
	stamps    map[string]fileStamp
	reloadErr error
}

// New builds an Authorizer and loads its keys; it fails when none is
// configured or a key file cannot be read.
func New(cfg Config) (*Authorizer, error) {
	if cfg.ReloadInterval == 0 {
		cfg.ReloadInterval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.HS256Secret) == 0 && cfg.HS256SecretFile == "" && cfg.PublicKeyFile == "" && cfg.JWKSFile == "" {
		return nil, errors.New("auth: no key: set an HS256 secret, a public key file or a JWKS file")
	}
	a := &Authorizer{
		cfg:    cfg,
		stamps: make(map[string]fileStamp),
	}
	a.parser = jwt.NewParser(
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return a.cfg.Now() }),
	)
	ks, err := a.load()
	if err != nil {
		return nil, err
	}
	a.keys.Store(ks)
	a.checked = cfg.Now()
	return a, nil
}

// files are the key files to watch.
func (a *Authorizer) files() []string {
	var fs []string
	for _, f := range []string{a.cfg.HS256SecretFile, a.cfg.PublicKeyFile, a.cfg.JWKSFile} {
		if f != "" {
			fs = append(fs, f)
		}
	}
	return fs
}

// load reads every key source into a new key set and records the files'
// stamps. Called with a.mu held, or before a is shared.
func (a *Authorizer) load() (*keySet, error) {
	ks := &keySet{hs: a.cfg.HS256Secret}
	stamps := make(map[string]fileStamp)
	read := func(path string) ([]byte, error) {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		stamps[path] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		return data, nil
	}
	if f := a.cfg.HS256SecretFile; f != "" {
		data, err := read(f)
		if err != nil {
			return nil, err
		}
		ks.hs = bytes.TrimSpace(data)
	}
	if len(ks.hs) > 0 && len(ks.hs) < MinSecretBytes {
		return nil, fmt.Errorf("auth: %s: the HS256 secret is %d bytes; want at least %d", cmp.Or(a.cfg.HS256SecretFile, "HS256Secret"), len(ks.hs), MinSecretBytes)
	}
	if f := a.cfg.HS256SecretFile; f != "" && len(ks.hs) == 0 {
		return nil, fmt.Errorf("auth: %s: the HS256 secret file is empty", f)
	}
	if f := a.cfg.PublicKeyFile; f != "" {
		data, err := read(f)
		if err != nil {
			return nil, err
		}
		if err := ks.addPEM(data); err != nil {
			return nil, fmt.Errorf("auth: %s: %w", f, err)
		}
	}
	if f := a.cfg.JWKSFile; f != "" {
		data, err := read(f)
		if err != nil {
			return nil, err
		}
		if err := ks.addJWKS(data); err != nil {
			return nil, fmt.Errorf("auth: %s: %w", f, err)
		}
	}
	if len(ks.hs) == 0 && len(ks.rsa) == 0 && len(ks.ec) == 0 {
		return nil, errors.New("auth: the key files hold no usable key")
	}
	a.stamps = stamps
	return ks, nil
}

// maybeReload reloads the key files if one changed since the last check,
// checking at most once per ReloadInterval. A file that fails to load
// keeps the keys in effect (see ReloadError).
func (a *Authorizer) maybeReload() {
	files := a.files()
	if len(files) == 0 {
		return
	}
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.ReloadInterval > 0 && now.Sub(a.checked) < a.cfg.ReloadInterval {
		return
	}
	a.checked = now
	changed := false
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			changed = true // report it below, keep the old keys
			break
		}
		if old, ok := a.stamps[f]; !ok || !old.mod.Equal(fi.ModTime()) || old.size != fi.Size() {
			changed = true
			break
		}
	}
	if !changed {
		return
	}
	ks, err := a.load()
	a.reloadErr = err
	if err == nil {
		a.keys.Store(ks)
	}
}

// ReloadError is the error of the last reload of the key files, nil when
// it succeeded (the keys before a failed reload stay in effect).
func (a *Authorizer) ReloadError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reloadErr
}

var (
	errAlgorithm = errors.New("algorithm not accepted")
	errNoKey     = errors.New("no key for this token")
	errBadClaim  = errors.New("malformed claim")
)

// Verify checks a token's algorithm, signature and times, and returns its
// claims. The error is an *Error whose Reason says what was wrong.
func (a *Authorizer) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, &Error{ReasonMissing, "no token: send it as ?token=, Authorization: Bearer, or the WebSocket subprotocol bearer.<token>"}
	}
	a.maybeReload()
	ks := a.keys.Load()
	claims := &Claims{}
	_, err := a.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		return ks.keyFor(t)
	})
	if err != nil {
		return nil, classify(err)
	}
	if err := claims.check(); err != nil {
		return nil, &Error{ReasonClaims, err.Error()}
	}
	return claims, nil
}

// keyFor picks the verification key by the token's alg (and kid): an HS256
// token is only ever verified with the HS256 secret, an RS256 one with
// RSA keys, an ES256 one with P-256 keys, so a token cannot choose how the
// server reads its keys (no HS/RS confusion, no none).
func (ks *keySet) keyFor(t *jwt.Token) (any, error) {
	alg, _ := t.Header["alg"].(string)
	kid, _ := t.Header["kid"].(string)
	switch alg {
	case "HS256":
		if len(ks.hs) == 0 {
			return nil, fmt.Errorf("%w: HS256 (this server has no HS256 secret)", errAlgorithm)
		}
		return ks.hs, nil
	case "RS256":
		return pick(ks.rsa, kid, alg)
	case "ES256":
		return pick(ks.ec, kid, alg)
	}
	return nil, fmt.Errorf("%w: %q (want HS256, RS256 or ES256)", errAlgorithm, alg)
}

func pick(keys []namedKey, kid, alg string) (any, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s (this server has no key for it)", errAlgorithm, alg)
	}
	var set jwt.VerificationKeySet
	for _, k := range keys {
		if kid == "" || k.kid == kid {
			set.Keys = append(set.Keys, k.key)
		}
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%w: kid %q", errNoKey, kid)
	}
	if len(set.Keys) == 1 {
		return set.Keys[0], nil
	}
	return set, nil
}

// classify maps a jwt error to a stable reason.
func classify(err error) *Error {
	msg := err.Error()
	switch {
	case errors.Is(err, errAlgorithm):
		return &Error{ReasonAlgorithm, msg}
	case errors.Is(err, errNoKey):
		return &Error{ReasonSignature, msg}
	case errors.Is(err, errBadClaim):
		return &Error{ReasonClaims, msg}
	case errors.Is(err, jwt.ErrTokenMalformed):
		return &Error{ReasonMalformed, msg}
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// ParseUnverified found no such signing method.
		return &Error{ReasonAlgorithm, msg}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &Error{ReasonSignature, msg}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return &Error{ReasonClaims, msg}
	case errors.Is(err, jwt.ErrTokenExpired):
		return &Error{ReasonExpired, msg}
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return &Error{ReasonNotYetValid, msg}
	}
	return &Error{ReasonClaims, msg}
}

// Claims are a verified token's claims.
type Claims struct {
	jwt.RegisteredClaims
	// Read are the topic patterns the holder may read.
	Read []string `json:"read,omitempty"`
	// Publish says where the holder may publish.
	Publish PublishClaim `json:"publish,omitempty"`
}

// PublishClaim is the publish claim: true (everywhere), false, or a list of
// topic patterns.
type PublishClaim struct {
	Patterns []string
}

// UnmarshalJSON accepts true, false, null or a list of patterns.
func (p *PublishClaim) UnmarshalJSON(b []byte) error {
	var all bool
	if err := json.Unmarshal(b, &all); err == nil {
		p.Patterns = nil
		if all {
			p.Patterns = []string{"*"}
		}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("%w: publish: want true, false or a list of topic patterns", errBadClaim)
	}
	p.Patterns = list
	return nil
}

// MarshalJSON writes the list of patterns.
func (p PublishClaim) MarshalJSON() ([]byte, error) {
	if p.Patterns == nil {
		return []byte("false"), nil
	}
	return json.Marshal(p.Patterns)
}

func (c *Claims) check() error {
	for _, p := range c.Read {
		if !validPattern(p) {
			return fmt.Errorf("read: %q is not a topic or a topic prefix ending in *", p)
		}
	}
	for _, p := range c.Publish.Patterns {
		if !validPattern(p) {
			return fmt.Errorf("publish: %q is not a topic or a topic prefix ending in *", p)
		}
	}
	return nil
}

func validPattern(p string) bool {
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		return prefix == "" || (len(prefix) < tick.MaxTopicLen && tick.ValidTopic(prefix))
	}
	return tick.ValidTopic(p)
}

// Deadline is when a stream holding c must end: its expiry plus the
// allowed clock skew.
func (a *Authorizer) Deadline(c *Claims) time.Time {
	return c.Expiry().Add(a.cfg.Leeway)
}

// Subject is the sub claim.
func (c *Claims) Subject() string { return c.RegisteredClaims.Subject }

// Expiry is when the token expires.
func (c *Claims) Expiry() time.Time {
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// CanRead reports whether the holder may read topic. topic may also be a
// subscription pattern (a prefix ending in *): it may be read when some
// topic it matches may be, so that a pattern subscription is accepted and
// its expansions are then checked one by one.
func (c *Claims) CanRead(topic string) bool { return allows(c.Read, topic) }

// CanPublish reports whether the holder may publish to topic.
func (c *Claims) CanPublish(topic string) bool { return allows(c.Publish.Patterns, topic) }

// allows reports whether one of patterns matches topic, or, if topic is a
// pattern itself, overlaps it.
func allows(patterns []string, topic string) bool {
	sub, isPattern := strings.CutSuffix(topic, "*")
	for _, p := range patterns {
		prefix, wild := strings.CutSuffix(p, "*")
		switch {
		case !isPattern && wild:
			if strings.HasPrefix(topic, prefix) {
				return true
			}
		case !isPattern:
			if topic == p {
				return true
			}
		case wild: // two prefixes overlap when one extends the other
			if strings.HasPrefix(sub, prefix) || strings.HasPrefix(prefix, sub) {
				return true
			}
		default:
			if strings.HasPrefix(p, sub) {
				return true
			}
		}
	}
	return false
}

// addPEM adds every public key in a PEM file.
func (ks *keySet) addPEM(data []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			continue // a private key or something else: not ours to use
		}
		if err != nil {
			return err
		}
		if err := ks.add("", key); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM public key (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block)")
	}
	return nil
}

func (ks *keySet) add(kid string, key any) error {
	switch k := key.(type) {
	case *rsa.PublicKey:
		ks.rsa = append(ks.rsa, namedKey{kid, k})
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("EC key on %s: only P-256 (ES256) is supported", k.Curve.Params().Name)
		}
		ks.ec = append(ks.ec, namedKey{kid, k})
	default:
		return fmt.Errorf("unsupported public key type %T: want RSA or P-256 EC", key)
	}
	return nil
}

// jwk is the part of a JSON Web Key that tickstream reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// addJWKS adds the RSA and P-256 keys of a JWKS; keys of other types, or
// for encryption (use "enc"), are skipped.
func (ks *keySet) addJWKS(data []byte) error {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("not a JWKS: %w", err)
	}
	n := 0
	for i, k := range set.Keys {
		if k.Use == "enc" {
			continue
		}
		key, err := k.publicKey()
		if err != nil {
			return fmt.Errorf("key %d (kid %q): %w", i, k.Kid, err)
		}
		if key == nil {
			continue
		}
		if err := ks.add(k.Kid, key); err != nil {
			return fmt.Errorf("key %d (kid %q): %w", i, k.Kid, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("the JWKS holds no RSA or P-256 EC signing key")
	}
	return nil
}

func (k jwk) publicKey() (any, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64(k.N)
		if err != nil {
			return nil, fmt.Errorf("n: %w", err)
		}
		e, err := b64(k.E)
		if err != nil {
			return nil, fmt.Errorf("e: %w", err)
		}
		if len(n) == 0 || len(e) == 0 || len(e) > 4 {
			return nil, errors.New("bad RSA modulus or exponent")
		}
		exp := 0
		for _, b := range e {
			exp = exp<<8 | int(b)
		}
		key := &rsa.PublicKey{E: exp}
		key.N = new(big.Int).SetBytes(n)
		return key, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("crv %q: only P-256 (ES256) is supported", k.Crv)
		}
		x, err := b64(k.X)
		if err != nil {
			return nil, fmt.Errorf("x: %w", err)
		}
		y, err := b64(k.Y)
		if err != nil {
			return nil, fmt.Errorf("y: %w", err)
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("x and y must be 32 bytes each")
		}
		raw := append(append([]byte{4}, x...), y...)
		key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
		if err != nil {
			return nil, err
		}
		return key, nil
	}
	return nil, nil // another key type: skipped
}

// b64 decodes base64url without padding, as JWKs encode numbers.
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}
