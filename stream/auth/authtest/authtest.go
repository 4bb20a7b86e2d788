// Package authtest makes JWTs for tests: well-signed ones, and the
// hostile kinds (alg none, HS256 signed with a public key, tampered
// payloads) a server must refuse.
package authtest

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// Sign signs claims with key.
func Sign(m jwt.SigningMethod, key any, claims jwt.Claims) string {
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		panic(err)
	}
	return s
}

// SignKid signs claims with key and puts kid in the header.
func SignKid(m jwt.SigningMethod, key any, kid string, claims jwt.Claims) string {
	t := jwt.NewWithClaims(m, claims)
	t.Header["kid"] = kid
	s, err := t.SignedString(key)
	if err != nil {
		panic(err)
	}
	return s
}

// HS256 signs claims with an HMAC secret.
func HS256(secret []byte, claims jwt.Claims) string {
	return Sign(jwt.SigningMethodHS256, secret, claims)
}

// None is an unsigned token (alg none).
func None(claims jwt.Claims) string {
	return Sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims)
}

// WithHeader replaces a token's header, keeping its payload and signature.
func WithHeader(token string, header map[string]any) string {
	parts := strings.Split(token, ".")
	parts[0] = segment(header)
	return strings.Join(parts, ".")
}

// Tamper replaces a token's payload, keeping its header and signature.
func Tamper(token string, claims map[string]any) string {
	parts := strings.Split(token, ".")
	parts[1] = segment(claims)
	return strings.Join(parts, ".")
}

func segment(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
