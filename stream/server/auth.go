package server

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Auth, when Config.Auth is set:
//
//   - /ws, /sse and the HTTP API (/api/topics, /api/history, /api/candles,
//     /api/publish) need a valid token, else 401 {"error":"unauthorized",
//     "reason":<auth.Reason…>}. /api/feeds, /healthz, /readyz, /metrics
//     and the dashboard's files stay open.
//   - A stream's subscriptions are checked against the token's read claim
//     (stream.Subscriber.SetReadCheck): a refused topic gets error
//     forbidden, and patterns only deliver the topics it allows.
//   - A stream ends when its token expires (WebSocket close 1008 "token
//     expired", SSE event error token_expired) unless the client refreshes
//     it first: {"op":"refresh","token":…} on /ws or POST /api/sse/<session>.
//   - POST /api/publish needs a publish right for each tick's topic.

// subprotocol is the WebSocket subprotocol the server speaks; a client
// may offer "bearer.<token>" beside it to pass its token.
const subprotocol = "tickstream"

const bearerProtocolPrefix = "bearer."

// claimsLocal is the fiber.Ctx local that carries a /ws request's claims
// into the WebSocket handler.
const claimsLocal = "tickstream.claims"

// disconnectTokenExpired closes a stream whose token expired.
var disconnectTokenExpired = &protocol.Disconnect{Code: 1008, Reason: "token expired"}

// requestToken is the token a request presents: the Authorization: Bearer
// header, else a bearer.<token> WebSocket subprotocol, else ?token=.
func requestToken(c *fiber.Ctx) string {
	if h := c.Get(fiber.HeaderAuthorization); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	for _, p := range strings.Split(c.Get("Sec-WebSocket-Protocol"), ",") {
		if p = strings.TrimSpace(p); strings.HasPrefix(p, bearerProtocolPrefix) {
			return p[len(bearerProtocolPrefix):]
		}
	}
	return c.Query("token")
}

// authenticate verifies the request's token when auth is on. With auth
// off it returns nil, nil. A refused request has been answered 401.
func (s *Server) authenticate(c *fiber.Ctx) (*auth.Claims, error) {
	if s.cfg.Auth == nil {
		return nil, nil
	}
	claims, err := s.cfg.Auth.Verify(requestToken(c))
	if err != nil {
		return nil, answered(unauthorized(c, err))
	}
	return claims, nil
}

// unauthorized answers 401 with the token's refusal reason.
func unauthorized(c *fiber.Ctx, err error) error {
	reason, msg := auth.ReasonMalformed, err.Error()
	if ae, ok := err.(*auth.Error); ok {
		reason, msg = ae.Reason, ae.Message
	}
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer error="invalid_token"`)
	return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "unauthorized", "reason": reason, "message": msg})
}

// forbidden answers 403.
func forbidden(c *fiber.Ctx, msg string) error {
	return apiError(c, fiber.StatusForbidden, protocol.CodeForbidden, msg)
}

// canRead reports whether claims (nil: auth off) may read topic.
func canRead(claims *auth.Claims, topic string) bool {
	return claims == nil || claims.CanRead(topic)
}

// connAuth is the token of one live stream: it sets the stream's read
// check and closes the stream when the token expires, unless refreshed.
type connAuth struct {
	s     *Server
	sub   *stream.Subscriber
	mu    sync.Mutex
	cl    *auth.Claims
	timer *time.Timer
}

// startAuth applies claims (nil: auth off, nothing to do) to a new stream.
func (s *Server) startAuth(sub *stream.Subscriber, claims *auth.Claims) *connAuth {
	if claims == nil {
		return nil
	}
	a := &connAuth{s: s, sub: sub}
	a.mu.Lock()
	a.setLocked(claims)
	a.mu.Unlock()
	s.auths.Store(sub, a)
	return a
}

func (a *connAuth) setLocked(claims *auth.Claims) {
	a.cl = claims
	a.sub.SetReadCheck(claims.CanRead)
	if a.timer != nil {
		a.timer.Stop()
	}
	a.timer = time.AfterFunc(time.Until(a.s.cfg.Auth.Deadline(claims)), func() {
		a.sub.Close(disconnectTokenExpired)
	})
}

// stop ends the expiry timer; the stream is over.
func (a *connAuth) stop() {
	if a == nil {
		return
	}
	a.s.auths.Delete(a.sub)
	a.mu.Lock()
	a.timer.Stop()
	a.mu.Unlock()
}

// refresh replaces the stream's token with a newer one of the same
// subject. The old token stays in effect when the new one is refused.
// Topics already subscribed stay; later subscribes use the new claims.
func (a *connAuth) refresh(token string) (*auth.Claims, *auth.Error) {
	claims, err := a.s.cfg.Auth.Verify(token)
	if err != nil {
		ae, ok := err.(*auth.Error)
		if !ok {
			ae = &auth.Error{Reason: auth.ReasonMalformed, Message: err.Error()}
		}
		return nil, ae
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if claims.Subject() != a.cl.Subject() {
		return nil, &auth.Error{Reason: auth.ReasonClaims, Message: "a refresh token must have the same sub as the stream's token"}
	}
	a.setLocked(claims)
	return claims, nil
}

// refreshOp is {"op":"refresh","id":…,"token":…}.
type refreshOp struct {
	Op    string          `json:"op"`
	ID    json.RawMessage `json:"id"`
	Token string          `json:"token"`
}

// parseRefresh recognizes a refresh message; other messages go to the
// subscriber.
func parseRefresh(msg []byte) (refreshOp, bool) {
	var op refreshOp
	if !bytes.Contains(msg, []byte(`"refresh"`)) {
		return op, false
	}
	if err := json.Unmarshal(msg, &op); err != nil || op.Op != "refresh" {
		return op, false
	}
	return op, true
}

// refreshWS carries out a refresh on a WebSocket: ack, or error with the
// refusal reason as its code (the connection stays up).
func (s *Server) refreshWS(sub *stream.Subscriber, a *connAuth, op refreshOp) {
	if a == nil {
		sub.Refuse(op.ID, protocol.CodeUnknownOp, "refresh: auth is off on this server")
		return
	}
	if _, err := a.refresh(op.Token); err != nil {
		sub.Refuse(op.ID, err.Reason, "refresh refused: "+err.Message)
		return
	}
	sub.Send(protocol.TypeAck, protocol.EncodeAck(op.ID, []string{}))
}

// refreshSSE carries out a refresh POSTed for an SSE session: 200 with the
// new expiry, or 401 with the refusal reason (the stream keeps its token).
func (s *Server) refreshSSE(c *fiber.Ctx, sub *stream.Subscriber, op refreshOp) error {
	v, _ := s.auths.Load(sub)
	a, _ := v.(*connAuth)
	if a == nil {
		return apiError(c, fiber.StatusBadRequest, protocol.CodeUnknownOp, "refresh: auth is off on this server")
	}
	claims, err := a.refresh(op.Token)
	if err != nil {
		return unauthorized(c, err)
	}
	return c.JSON(fiber.Map{"ok": true, "op": "refresh", "exp": claims.Expiry().Unix()})
}

// claimsOf returns the current (possibly refreshed) claims of a stream,
// nil with auth off.
func (s *Server) claimsOf(sub *stream.Subscriber) *auth.Claims {
	v, ok := s.auths.Load(sub)
	if !ok {
		return nil
	}
	a := v.(*connAuth)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cl
}
