package stream

import (
	"errors"
	"fmt"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Sentinel errors.
var (
	ErrUnknownTopic = errors.New("stream: unknown topic")
	// ErrTooManyTopic refuses a tick for a new topic past MaxTopics; it
	// comes in a *tick.Error, so feeds skip the tick (tick.ErrOverLimit).
	ErrTooManyTopic = fmt.Errorf("stream: too many topics: %w", tick.ErrOverLimit)
	// ErrTopicQuota refuses a tick for a new topic from a feed that has
	// created MaxTopicsPerFeed topics already (tick.ErrOverLimit).
	ErrTopicQuota = fmt.Errorf("stream: topic quota: %w", tick.ErrOverLimit)
	// ErrClosed: the bus is closed; feeds stop (tick.ErrClosed).
	ErrClosed = fmt.Errorf("stream: bus closed: %w", tick.ErrClosed)
	// ErrClientGone is Deliver's result when the subscriber was closed
	// without a reason: the client went away.
	ErrClientGone = errors.New("stream: client gone")
)
