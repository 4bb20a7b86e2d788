// Package protocol is tickstream's wire protocol in one place: the client
// ops and their validation (ParseOp, ValidSub, Throttle), the server
// messages and their encoders (Append*, Encode*), the stable error codes,
// reset reasons and close codes, the SSE event-id cursor codec, and
// WireMessage for Go clients that decode what the server sends. The bus
// (package stream) and the HTTP handlers (package stream/server) both
// speak it through this package, so one rule has one implementation.
// docs/protocol.md is the reference for users.
package protocol
