package feeds

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// ErrClosed is the error (wrapped) that a Sink returns once the bus it
// publishes into is closed. A feed that gets it stops: its Run returns
// nil (or the error; the supervisor treats both as the end of the feed,
// not as a failure to restart).
var ErrClosed = tick.ErrClosed

// ErrOverLimit refuses one tick that is over a limit of the bus (too many
// topics, a ts too far from now, …). It is wrapped in a *TickError like the
// validation errors, so that the feed skips the tick and goes on.
var ErrOverLimit = tick.ErrOverLimit

// Deliver publishes t into out and applies the Sink contract for the
// caller:
//
//   - accepted: nil;
//   - refused (a *TickError): nil; the tick is skipped. The supervisor's
//     sink has already counted it as dropped for this feed;
//   - the bus is closed (errors.Is(err, ErrClosed)): the error; Run must
//     end (return nil, see Stopped);
//   - anything else breaks the contract: the error, and Run should
//     return it so that the supervisor restarts the feed.
//
// Every built-in adapter publishes through Deliver:
//
//	if err := feeds.Deliver(out, t); err != nil {
//		return feeds.Stopped(err)
//	}
func Deliver(out Sink, t Tick) error {
	err := out.Publish(t)
	if err == nil || Refused(err) {
		return nil
	}
	return err
}

// Refused reports whether err, from Sink.Publish, refuses only the tick
// (a *TickError): skip it and go on.
func Refused(err error) bool {
	var te *TickError
	return errors.As(err, &te) && !errors.Is(err, ErrClosed)
}

// Stopped turns the error Deliver returned into what Run returns: nil
// when the bus is closed (the feed simply ends), err otherwise.
func Stopped(err error) error {
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// DropReason is the bounded label of a dropped message, as shown in
// Status.LastDropReason and in the reason label of
// tickstream_feed_dropped_total.
type DropReason string

// Drop reasons. A tick refused by the bus gets the reason of its
// *TickError sentinel; a message the adapter could not turn into a tick
// (bad number, bad row, unknown shape) is DropUnmapped.
const (
	DropUnmapped     DropReason = "unmapped"
	DropBadTopic     DropReason = "bad_topic"
	DropBadField     DropReason = "bad_field"
	DropNonFinite    DropReason = "non_finite"
	DropTooManyField DropReason = "too_many_fields"
	DropBadJSON      DropReason = "bad_json"
	DropOverLimit    DropReason = "over_limit"
	// DropRefused is any other refusal by the bus.
	DropRefused DropReason = "refused"
)

// DropReasons lists every DropReason, the label values of
// tickstream_feed_dropped_total.
var DropReasons = []DropReason{DropUnmapped, DropBadTopic, DropBadField, DropNonFinite, DropTooManyField, DropBadJSON, DropOverLimit, DropRefused}

// ReasonOf is the DropReason of a refusal error from Sink.Publish.
func ReasonOf(err error) DropReason {
	for _, r := range []struct {
		err    error
		reason DropReason
	}{
		{ErrBadTopic, DropBadTopic}, {ErrBadField, DropBadField}, {ErrNonFinite, DropNonFinite},
		{ErrTooManyField, DropTooManyField}, {ErrBadJSON, DropBadJSON}, {ErrOverLimit, DropOverLimit},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return DropRefused
}

// DropReporter is implemented by a Sink that keeps a feed's drop
// accounting (the supervisor's). Adapters report messages they could not
// map through Drop, not by calling it directly.
type DropReporter interface {
	// ReportDrop counts one dropped message of reason; detail says what
	// was wrong, for people (it is shown truncated).
	ReportDrop(reason DropReason, detail string)
}

// Drop reports one message that the feed received but could not turn
// into a tick (reason DropUnmapped, usually), if out keeps drop
// accounting. Ticks refused by Publish are counted by the sink itself;
// do not report them again.
func Drop(out Sink, reason DropReason, err error) {
	if r, ok := out.(DropReporter); ok {
		detail := ""
		if err != nil {
			detail = err.Error()
		}
		r.ReportDrop(reason, detail)
	}
}

// TimeUnit is the unit of a numeric source timestamp.
type TimeUnit string

// Time units understood by ParseUnixMilli.
const (
	Seconds      TimeUnit = "s"
	Milliseconds TimeUnit = "ms"
	Microseconds TimeUnit = "us"
	Nanoseconds  TimeUnit = "ns"
)

// maxUnixMilli bounds a parsed timestamp (about the year 285,000), well
// inside int64 and float64's exact integers.
const maxUnixMilli = 1 << 53

// ParseUnixMilli converts a decimal timestamp in unit (digits with an
// optional fraction and exponent, as exchanges send them: "1534614057",
// "1534614057.321597", "1.534614057e9") to Unix milliseconds, exactly and
// truncated: a source time is never rounded up into the next millisecond
// (nor the next second, minute or candle): "1534614057.9996" s is
// 1534614057999. Negative and out-of-range values are errors.
func ParseUnixMilli(s string, unit TimeUnit) (int64, error) {
	s = strings.TrimSpace(s)
	var shift int // decimal digits to move the point right to reach ms
	switch unit {
	case Seconds:
		shift = 3
	case Milliseconds:
		shift = 0
	case Microseconds:
		shift = -3
	case Nanoseconds:
		shift = -6
	default:
		return 0, fmt.Errorf("unit %q: want s, ms, us or ns", unit)
	}
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e < -40 || e > 40 {
			return 0, fmt.Errorf("%q is not a timestamp", s)
		}
		mant, exp = s[:i], e
	}
	mant = strings.TrimPrefix(mant, "+")
	intPart, frac, _ := strings.Cut(mant, ".")
	if intPart+frac == "" || !allDigits(intPart) || !allDigits(frac) {
		return 0, fmt.Errorf("%q is not a timestamp", s)
	}
	// value = digits × 10^p, exactly; keep the integer part of that.
	digits := strings.TrimLeft(intPart+frac, "0")
	p := exp + shift - len(frac)
	if p >= 0 {
		if digits != "" {
			digits += strings.Repeat("0", p)
		}
	} else if -p >= len(digits) {
		digits = ""
	} else {
		digits = digits[:len(digits)+p] // truncate, never round
	}
	if digits == "" {
		return 0, nil
	}
	if len(digits) > 16 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	ms, _ := strconv.ParseInt(digits, 10, 64)
	if ms > maxUnixMilli {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return ms, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ParseRFC3339Milli parses an RFC 3339 time to Unix milliseconds,
// truncating sub-millisecond digits. Times before 1970 are errors.
func ParseRFC3339Milli(s string) (int64, error) {
	tm, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not an RFC 3339 time", s)
	}
	if tm.Before(time.Unix(0, 0)) {
		return 0, fmt.Errorf("%q is before 1970", s)
	}
	return tm.UnixMilli(), nil
}
