package stream

import (
	"errors"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// TestTSPolicy: a ts past MaxFutureSkew or MaxTickAge is refused with a
// *tick.Error wrapping tick.ErrOverLimit (which feeds skip), or stamped
// with the accept time; a far-future tick never stops later ticks from
// making their bars.
func TestTSPolicy(t *testing.T) {
	t.Parallel()
	now := time.UnixMilli(baseTS + 500)
	clock := func() time.Time { return now }
	b := newTestBus(t, BusConfig{MaxFutureSkew: 5 * time.Second, MaxTickAge: time.Hour, Now: clock})
	for _, ts := range []int64{baseTS + 500 + 5_001, baseTS + 500 - 3_600_001} {
		_, err := b.Publish("test", priceTick("P", ts, 1, 1))
		var te *tick.Error
		if !errors.As(err, &te) || !errors.Is(err, tick.ErrOverLimit) {
			t.Fatalf("ts %d: err %v, want a *tick.Error wrapping ErrOverLimit", ts, err)
		}
	}
	mustPublish(t, b, priceTick("P", baseTS+500+5_000, 9, 1)) // at the skew limit: accepted
	for i := range 3 {
		mustPublish(t, b, priceTick("P", baseTS+int64(i)*1000, float64(i+1), 1))
	}
	bars, _ := b.Candles("P", "1s", 10)
	if len(bars) != 4 || bars[0].T != baseTS || bars[1].T != baseTS+1000 || bars[2].T != baseTS+2000 || bars[3].C.Float() != 9 {
		t.Fatalf("bars %+v: want one per second and the future one last", bars)
	}

	s := newTestBus(t, BusConfig{MaxFutureSkew: 5 * time.Second, MaxTickAge: time.Hour, TSPolicy: TSStamp, Now: clock})
	mustPublish(t, s, priceTick("S", baseTS+3_600_000, 1, 1))
	hist, _ := s.History("S", 0, 10)
	if len(hist.Ticks) != 1 || hist.Ticks[0].TS != now.UnixMilli() {
		t.Fatalf("stamped history %+v, want ts %d", hist.Ticks, now.UnixMilli())
	}
	if _, err := NewBus(BusConfig{TSPolicy: "drop"}); err == nil {
		t.Fatal("TSPolicy drop accepted")
	}
}
