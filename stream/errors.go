package stream

import "errors"

// Sentinel errors.
var (
	ErrUnknownTopic = errors.New("stream: unknown topic")
	ErrTooManyTopic = errors.New("stream: too many topics")
	ErrClosed       = errors.New("stream: bus closed")
	// ErrClientGone is Deliver's result when the subscriber was closed
	// without a reason: the client went away.
	ErrClientGone = errors.New("stream: client gone")
)
