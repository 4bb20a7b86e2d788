package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/auth/authtest"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

var testSecret = []byte("tickstream test secret, 32+ bytes long")

// startAuthServer starts a server with auth on, verifying HS256 tokens
// signed with testSecret.
func startAuthServer(t *testing.T, mod func(*auth.Config)) *env {
	t.Helper()
	cfg := auth.Config{HS256Secret: testSecret}
	if mod != nil {
		mod(&cfg)
	}
	a, err := auth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.Auth = a })
}

// token is an HS256 token for testSecret expiring in exp, reading read,
// with extra claims.
func token(exp time.Duration, read []string, extra jwt.MapClaims) string {
	c := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(exp).Unix(), "read": read}
	for k, v := range extra {
		c[k] = v
	}
	return authtest.HS256(testSecret, c)
}

// authErr is the body of a 401.
type authErr struct {
	Error   string `json:"error"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// doAuth does a request with an Authorization: Bearer header (when tok is
// not empty) and extra headers.
func (e *env) doAuth(t testing.TB, method, path, tok string, body []byte, header http.Header, out any) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.url(path), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(buf.Bytes(), out); err != nil {
			t.Fatalf("%s %s: status %d, body %q: %v", method, path, resp.StatusCode, buf.Bytes(), err)
		}
	}
	return resp.StatusCode, buf.Bytes()
}

// wsUpgradeHeader makes a GET a WebSocket upgrade request.
func wsUpgradeHeader() http.Header {
	return http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

// Every hostile token is refused with 401 and its stable reason, on /ws,
// /sse, the read API and publish; a server with RS256 keys only.
func TestAuthRefusesBadTokens(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	pemFile := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(pemFile, pubPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(auth.Config{PublicKeyFile: pemFile})
	if err != nil {
		t.Fatal(err)
	}
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.Auth = a })
	e.publish("BTC-USD", 1, f("price", 1))

	cl := func(exp time.Duration, extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "mallory", "exp": time.Now().Add(exp).Unix(), "read": []string{"*"}, "publish": true}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	good := authtest.Sign(jwt.SigningMethodRS256, rsaKey, cl(time.Hour, nil))
	// A well-behaved client, connected throughout the attack.
	honest, _ := e.welcomeWS(t, wsOpts{header: http.Header{"Authorization": {"Bearer " + good}}})
	honest.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"BTC-USD"}, ThrottleMS: ms(0)})
	honest.expect(protocol.TypeAck)
	honest.expect(protocol.TypeSnapshot)
	cases := []struct{ name, token, reason string }{
		{"missing", "", auth.ReasonMissing},
		{"garbage", "garbage", auth.ReasonMalformed},
		{"alg-none", authtest.None(cl(time.Hour, nil)), auth.ReasonAlgorithm},
		{"hs256-with-public-key", authtest.HS256(pubPEM, cl(time.Hour, nil)), auth.ReasonAlgorithm},
		{"alg-header-swapped", authtest.WithHeader(good, map[string]any{"alg": "HS256", "typ": "JWT"}), auth.ReasonAlgorithm},
		{"forged", authtest.Sign(jwt.SigningMethodRS256, other, cl(time.Hour, nil)), auth.ReasonSignature},
		{"tampered", authtest.Tamper(good, cl(2*time.Hour, jwt.MapClaims{"sub": "admin"})), auth.ReasonSignature},
		{"expired", authtest.Sign(jwt.SigningMethodRS256, rsaKey, cl(-time.Minute, nil)), auth.ReasonExpired},
		{"not-yet-valid", authtest.Sign(jwt.SigningMethodRS256, rsaKey, cl(time.Hour, jwt.MapClaims{"nbf": time.Now().Add(time.Hour).Unix()})), auth.ReasonNotYetValid},
		{"no-exp", authtest.Sign(jwt.SigningMethodRS256, rsaKey, jwt.MapClaims{"sub": "x", "read": []string{"*"}}), auth.ReasonClaims},
	}
	endpoints := []struct {
		name, method, path string
		header             http.Header
		body               []byte
	}{
		{"ws", http.MethodGet, "/ws", wsUpgradeHeader(), nil},
		{"sse", http.MethodGet, "/sse?topics=BTC-USD", nil, nil},
		{"topics", http.MethodGet, "/api/topics", nil, nil},
		{"history", http.MethodGet, "/api/history?topic=BTC-USD", nil, nil},
		{"candles", http.MethodGet, "/api/candles?topic=BTC-USD", nil, nil},
		{"publish", http.MethodPost, "/api/publish", nil, []byte(`[{"topic":"BTC-USD","ts":2,"price":99}]`)},
	}
	for _, tc := range cases {
		for _, ep := range endpoints {
			t.Run(tc.name+"/"+ep.name, func(t *testing.T) {
				var ae authErr
				status, raw := e.doAuth(t, ep.method, ep.path, tc.token, ep.body, ep.header, &ae)
				if status != http.StatusUnauthorized || ae.Error != "unauthorized" || ae.Reason != tc.reason || ae.Message == "" {
					t.Errorf("got %d %s, want 401 unauthorized reason %s", status, raw, tc.reason)
				}
			})
		}
	}
	// The same token in the query and the subprotocol is refused alike.
	forged := cases[5].token
	var ae authErr
	if status, raw := e.doAuth(t, http.MethodGet, "/sse?topics=BTC-USD&token="+forged, "", nil, nil, &ae); status != 401 || ae.Reason != auth.ReasonSignature {
		t.Errorf("forged ?token=: %d %s", status, raw)
	}
	h := wsUpgradeHeader()
	h.Set("Sec-WebSocket-Protocol", "tickstream, bearer."+forged)
	if status, raw := e.doAuth(t, http.MethodGet, "/ws", "", nil, h, &ae); status != 401 || ae.Reason != auth.ReasonSignature {
		t.Errorf("forged subprotocol: %d %s", status, raw)
	}
	// Nothing was published by the refused requests.
	var hist struct{ Ticks []json.RawMessage }
	if status, _ := e.doAuth(t, http.MethodGet, "/api/history?topic=BTC-USD", good, nil, nil, &hist); status != 200 || len(hist.Ticks) != 1 {
		t.Errorf("history after the refused publishes: %d, %d ticks, want 1", status, len(hist.Ticks))
	}
	// The server stays healthy, and the honest client keeps its stream.
	if status, _ := e.get("/healthz", nil); status != 200 {
		t.Errorf("/healthz: %d", status)
	}
	e.publish("BTC-USD", 3, f("price", 3))
	if m := honest.expect(protocol.TypeUpdate); m.Topic != "BTC-USD" || m.Seq != 2 {
		t.Errorf("honest client got %s, want the update of seq 2", m)
	}
}

// A valid token is taken from the Authorization header, the subprotocol
// (tickstream is echoed) and ?token=.
func TestAuthTokenSources(t *testing.T) {
	e := startAuthServer(t, nil)
	tok := token(time.Hour, []string{"*"}, nil)
	dial := func(url string, opts *websocket.DialOptions) *websocket.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, url, opts)
		if err != nil {
			t.Fatalf("dial %s: %v (%v)", url, err, resp)
		}
		_, frame, err := conn.Read(ctx)
		if err != nil || !bytes.Contains(frame, []byte(`"welcome"`)) {
			t.Fatalf("first frame %q, %v: want welcome", frame, err)
		}
		return conn
	}
	ws := "ws://" + e.addr + "/ws"
	c1 := dial(ws, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	c1.CloseNow()
	c2 := dial(ws, &websocket.DialOptions{Subprotocols: []string{"tickstream", "bearer." + tok}})
	if c2.Subprotocol() != "tickstream" {
		t.Errorf("subprotocol %q, want tickstream echoed", c2.Subprotocol())
	}
	c2.CloseNow()
	c3 := dial(ws+"?token="+tok, nil)
	c3.CloseNow()
	s := e.openSSE(t, "/sse?token="+tok, nil)
	s.expect(protocol.TypeWelcome)
	s.close()
}

func collect(t *testing.T, c *wsClient, until func(msg) bool) []msg {
	t.Helper()
	var got []msg
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := c.next(time.Until(deadline))
		got = append(got, m)
		if until(m) {
			return got
		}
	}
}

// A subscribe is checked against the read claim: a refused topic gets
// error forbidden and the connection stays; a pattern only delivers the
// allowed topics, now and as they are created.
func TestAuthSubscribeForbidden(t *testing.T) {
	e := startAuthServer(t, nil)
	for _, topic := range []string{"crypto.A", "crypto.B", "ETH-USD", "BTC-USD", "BTC-USDT"} {
		e.publish(topic, 1, f("price", 1))
	}
	tok := token(time.Hour, []string{"crypto.*", "BTC-USD"}, nil)
	c, _ := e.welcomeWS(t, wsOpts{header: http.Header{"Authorization": {"Bearer " + tok}}})

	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"ETH-USD", "BTC-USD", "ETH*"}, ThrottleMS: ms(0)})
	got := collect(t, c, func(m msg) bool { return m.Type == protocol.TypeSnapshot })
	forbidden := map[string]bool{}
	for _, m := range got {
		switch m.Type {
		case protocol.TypeAck:
			if len(m.Topics) != 1 || m.Topics[0] != "BTC-USD" {
				t.Errorf("ack %s: want topics [BTC-USD]", m)
			}
		case protocol.TypeError:
			if m.Code != protocol.CodeForbidden {
				t.Errorf("error %s: want code forbidden", m)
			}
			for _, name := range []string{"ETH-USD", "ETH*"} {
				if strings.Contains(m.Message, `"`+name+`"`) {
					forbidden[name] = true
				}
			}
		case protocol.TypeSnapshot:
			if m.Topic != "BTC-USD" {
				t.Errorf("snapshot of %s", m.Topic)
			}
		}
	}
	if !forbidden["ETH-USD"] || !forbidden["ETH*"] {
		t.Errorf("messages %v: want forbidden errors for ETH-USD and ETH*", got)
	}

	// Everything: only the allowed topics are delivered.
	c.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"*"}, ThrottleMS: ms(0)})
	snaps := map[string]bool{}
	collect(t, c, func(m msg) bool {
		if m.Type == protocol.TypeSnapshot {
			snaps[m.Topic] = true
		}
		return snaps["crypto.A"] && snaps["crypto.B"]
	})
	for topic := range snaps {
		if topic != "crypto.A" && topic != "crypto.B" && topic != "BTC-USD" {
			t.Errorf("snapshot of %s, which the token does not allow", topic)
		}
	}
	// Topics created later: ETH-NEW is not delivered, crypto.NEW is.
	e.publish("ETH-NEW", 2, f("price", 2))
	e.publish("ETH-USD", 2, f("price", 2))
	e.publish("crypto.NEW", 2, f("price", 2))
	got = collect(t, c, func(m msg) bool { return m.Topic == "crypto.NEW" })
	c.send(map[string]any{"op": "ping", "id": 3})
	got = append(got, collect(t, c, func(m msg) bool { return m.Type == protocol.TypePong })...)
	for _, m := range got {
		if strings.HasPrefix(m.Topic, "ETH") || m.Topic == "BTC-USDT" {
			t.Errorf("delivered %s, which the token does not allow", m)
		}
	}

	// SSE: the same checks, on the URL's topics and on a POSTed subscribe.
	s := e.openSSE(t, "/sse?topics=ETH-USD,BTC-USD&throttle_ms=0&token="+tok, nil)
	_, w := s.expect(protocol.TypeWelcome)
	_, m := s.expect(protocol.TypeAck)
	if len(m.Topics) != 1 || m.Topics[0] != "BTC-USD" {
		t.Errorf("SSE ack %s", m)
	}
	if _, m := s.expect(protocol.TypeError); m.Code != protocol.CodeForbidden {
		t.Errorf("SSE error %s", m)
	}
	s.expect(protocol.TypeSnapshot)
	var ae apiErr
	status, raw := e.doAuth(t, http.MethodPost, "/api/sse/"+w.Session, "", []byte(`{"op":"subscribe","topics":["ETH-USD"]}`), nil, &ae)
	if status != http.StatusForbidden || ae.Error != protocol.CodeForbidden {
		t.Errorf("POST subscribe ETH-USD: %d %s, want 403 forbidden", status, raw)
	}
	if status, raw := e.doAuth(t, http.MethodPost, "/api/sse/"+w.Session, "", []byte(`{"op":"subscribe","topics":["crypto.A"]}`), nil, nil); status != 200 {
		t.Errorf("POST subscribe crypto.A: %d %s", status, raw)
	}

	// The read API: topics filtered, history and candles checked.
	var topics []struct{ Topic string }
	e.doAuth(t, http.MethodGet, "/api/topics", tok, nil, nil, &topics)
	for _, ti := range topics {
		if !strings.HasPrefix(ti.Topic, "crypto.") && ti.Topic != "BTC-USD" {
			t.Errorf("/api/topics lists %s", ti.Topic)
		}
	}
	if len(topics) != 4 {
		t.Errorf("/api/topics: %d topics, want 4 (crypto.A, crypto.B, crypto.NEW, BTC-USD)", len(topics))
	}
	for _, path := range []string{"/api/history?topic=ETH-USD", "/api/candles?topic=ETH-USD"} {
		if status, raw := e.doAuth(t, http.MethodGet, path, tok, nil, nil, &ae); status != 403 || ae.Error != protocol.CodeForbidden {
			t.Errorf("%s: %d %s, want 403 forbidden", path, status, raw)
		}
	}
	if status, raw := e.doAuth(t, http.MethodGet, "/api/candles?topic=BTC-USD", tok, nil, nil, nil); status != 200 {
		t.Errorf("candles of BTC-USD: %d %s", status, raw)
	}
}

// Publishing needs a publish right, per tick's topic.
func TestAuthPublishRights(t *testing.T) {
	e := startAuthServer(t, nil)
	body := []byte("{\"topic\":\"sim.A\",\"ts\":1,\"price\":1}\n{\"topic\":\"BTC-USD\",\"ts\":1,\"price\":2}\n")
	type result struct {
		Accepted int `json:"accepted"`
		Refused  []struct {
			Line  int    `json:"line"`
			Error string `json:"error"`
			Code  string `json:"code"`
		} `json:"refused"`
	}
	var res result
	status, raw := e.doAuth(t, http.MethodPost, "/api/publish", token(time.Hour, nil, jwt.MapClaims{"publish": []string{"sim.*"}}), body, nil, &res)
	if status != 200 || res.Accepted != 1 || len(res.Refused) != 1 || res.Refused[0].Line != 2 || res.Refused[0].Code != protocol.CodeForbidden {
		t.Errorf("publish to sim.* only: %d %s", status, raw)
	}
	res = result{}
	status, raw = e.doAuth(t, http.MethodPost, "/api/publish", token(time.Hour, nil, jwt.MapClaims{"publish": []string{"ETH*"}}), body, nil, &res)
	if status != 403 || res.Accepted != 0 || len(res.Refused) != 2 {
		t.Errorf("publish to ETH* only: %d %s, want 403 with both refused", status, raw)
	}
	for _, claims := range []jwt.MapClaims{{"publish": false}, nil} {
		var ae apiErr
		status, raw := e.doAuth(t, http.MethodPost, "/api/publish", token(time.Hour, []string{"*"}, claims), body, nil, &ae)
		if status != 403 || ae.Error != protocol.CodeForbidden {
			t.Errorf("publish with %v: %d %s, want 403 forbidden", claims, status, raw)
		}
	}
	res = result{}
	status, raw = e.doAuth(t, http.MethodPost, "/api/publish", token(time.Hour, nil, jwt.MapClaims{"publish": true}), body, nil, &res)
	if status != 200 || res.Accepted != 2 {
		t.Errorf("publish true: %d %s", status, raw)
	}
}

// expiresSoon is a token that expires within 2 s (exp is whole seconds).
func expiresSoon(read []string) (string, time.Time) {
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	return authtest.HS256(testSecret, jwt.MapClaims{"sub": "alice", "exp": exp.Unix(), "read": read}), exp
}

// A WebSocket whose token expires is closed with 1008 "token expired"
// and a retry hint.
func TestAuthWSTokenExpiry(t *testing.T) {
	e := startAuthServer(t, nil)
	tok, _ := expiresSoon([]string{"*"})
	c, _ := e.welcomeWS(t, wsOpts{header: http.Header{"Authorization": {"Bearer " + tok}}})
	ce := c.closeStatus(10 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || !strings.HasPrefix(ce.Reason, "token expired retry_ms=") {
		t.Errorf("close %d %q, want 1008 \"token expired retry_ms=…\"", ce.Code, ce.Reason)
	}
}

// A refresh before expiry keeps the connection; a refused refresh keeps
// the old token and answers an error with the reason.
func TestAuthWSRefresh(t *testing.T) {
	e := startAuthServer(t, nil)
	tok, exp := expiresSoon([]string{"*"})
	c, _ := e.welcomeWS(t, wsOpts{header: http.Header{"Authorization": {"Bearer " + tok}}})

	c.send(map[string]any{"op": "refresh", "id": 1, "token": authtest.HS256([]byte("wrong secret"), jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()})})
	if m := c.expect(protocol.TypeError); m.Code != auth.ReasonSignature || string(m.ID) != "1" {
		t.Errorf("refresh with a forged token: %s", m)
	}
	c.send(map[string]any{"op": "refresh", "id": 2, "token": authtest.HS256(testSecret, jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(time.Hour).Unix()})})
	if m := c.expect(protocol.TypeError); m.Code != auth.ReasonClaims {
		t.Errorf("refresh with another sub: %s", m)
	}
	c.send(map[string]any{"op": "refresh", "id": 3, "token": token(time.Hour, []string{"*"}, nil)})
	if m := c.expect(protocol.TypeAck); string(m.ID) != "3" {
		t.Errorf("refresh: %s, want ack id 3", m)
	}
	// Past the first token's expiry the connection is still up.
	for time.Now().Before(exp.Add(500 * time.Millisecond)) {
		time.Sleep(100 * time.Millisecond)
	}
	c.send(map[string]any{"op": "ping", "id": 4})
	c.expect(protocol.TypePong)
}

// An SSE stream whose token expires ends with event error token_expired;
// one refreshed by a POST for its session keeps going.
func TestAuthSSETokenExpiryAndRefresh(t *testing.T) {
	e := startAuthServer(t, nil)
	tok, _ := expiresSoon([]string{"*"})
	s := e.openSSE(t, "/sse?token="+tok, nil)
	s.expect(protocol.TypeWelcome)
	if _, m := s.nextEvent(10 * time.Second); m.Type != protocol.TypeError || m.Code != protocol.CodeTokenExpired {
		t.Errorf("got %s, want error token_expired", m)
	}
	deadline := time.After(10 * time.Second)
	for ended := false; !ended; {
		select {
		case _, ok := <-s.events:
			ended = !ok
		case <-deadline:
			t.Fatal("the stream did not end after token_expired")
		}
	}

	tok, exp := expiresSoon([]string{"*"})
	s = e.openSSE(t, "/sse?token="+tok, nil)
	_, w := s.expect(protocol.TypeWelcome)
	ctl := "/api/sse/" + w.Session
	var ae authErr
	if status, raw := e.doAuth(t, http.MethodPost, ctl, "", []byte(`{"op":"refresh","token":"forged.token.here"}`), nil, &ae); status != 401 || ae.Reason != auth.ReasonMalformed {
		t.Errorf("refresh with garbage: %d %s", status, raw)
	}
	var ok struct {
		OK  bool  `json:"ok"`
		Exp int64 `json:"exp"`
	}
	if status, raw := e.doAuth(t, http.MethodPost, ctl, "", []byte(`{"op":"refresh","token":"`+token(time.Hour, []string{"*"}, nil)+`"}`), nil, &ok); status != 200 || !ok.OK || ok.Exp <= exp.Unix() {
		t.Errorf("refresh: %d %s", status, raw)
	}
	for time.Now().Before(exp.Add(500 * time.Millisecond)) {
		time.Sleep(100 * time.Millisecond)
	}
	if status, raw := e.doAuth(t, http.MethodPost, ctl, "", []byte(`{"op":"ping"}`), nil, nil); status != 200 {
		t.Errorf("ping after the first token's expiry: %d %s", status, raw)
	}
	e.publish("X", 1, f("price", 1))
	if status, raw := e.doAuth(t, http.MethodPost, ctl, "", []byte(`{"op":"subscribe","topics":["X"]}`), nil, nil); status != 200 {
		t.Errorf("subscribe after refresh: %d %s", status, raw)
	}
	for {
		if _, m := s.nextEvent(5 * time.Second); m.Type == protocol.TypeAck {
			break
		}
	}
}

// With auth off (the default) a refresh is an unknown op and nothing
// needs a token.
func TestAuthOffRefreshUnknown(t *testing.T) {
	e := startServer(t, nil)
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(map[string]any{"op": "refresh", "id": 1, "token": "x"})
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeUnknownOp {
		t.Errorf("refresh with auth off: %s", m)
	}
}
