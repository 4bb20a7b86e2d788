package feeds_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

// fakeLease is a lease the test grants and revokes.
type fakeLease struct {
	mu       sync.Mutex
	grant    chan struct{} // closed to grant the lease
	lose     context.CancelFunc
	released int
}

func newFakeLease() *fakeLease { return &fakeLease{grant: make(chan struct{})} }

func (l *fakeLease) Acquire(ctx context.Context, _ string) (context.Context, func(), error) {
	l.mu.Lock()
	grant := l.grant
	l.mu.Unlock()
	select {
	case <-grant:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	held, lose := context.WithCancel(ctx)
	l.mu.Lock()
	l.lose = lose
	l.mu.Unlock()
	return held, func() { lose(); l.mu.Lock(); l.released++; l.mu.Unlock() }, nil
}

// revoke ends the held lease, and makes the next Acquire wait.
func (l *fakeLease) revoke() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.grant = make(chan struct{})
	l.lose()
}

func (l *fakeLease) give() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.grant)
}

// With a lease, a feed runs only while its lease is held: before, it is
// standby and the supervisor is ready (another node runs it); a lost
// lease stops it without counting a failure, and it runs again once the
// lease comes back.
func TestSupervisorRunsAFeedOnlyWhileItHoldsItsLease(t *testing.T) {
	b := &behaviour{}
	sink := &feedtest.Sink{}
	lease := newFakeLease()
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry:     fakeRegistry(map[string]*behaviour{"leased": b}),
		Feeds:        []feeds.Config{fakeConfig("leased", "")},
		Sink:         func(string) feeds.Sink { return sink },
		HealthyAfter: 20 * time.Millisecond,
		Lease:        lease,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	s.Start()
	state := func() feeds.Status { return s.Statuses()[0] }
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := state(); st.State != feeds.StateStandby || !s.Ready() {
			return errors.New("want standby and ready while another node holds the lease")
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond) // a feed without its lease never runs
	if b.runs.Load() != 0 || sink.Len() != 0 {
		t.Fatalf("ran %d times without the lease", b.runs.Load())
	}

	lease.give()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := state(); st.State != feeds.StateRunning || sink.Len() == 0 {
			return errors.New("not running with its lease")
		}
		return nil
	})
	lease.revoke()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := state(); st.State != feeds.StateStandby {
			return errors.New("still running after its lease was lost")
		}
		return nil
	})
	if st := state(); st.Failures != 0 || st.Restarts != 0 {
		t.Fatalf("a lost lease counted as a failure: %+v", st)
	}
	n := sink.Len()
	time.Sleep(20 * time.Millisecond)
	if sink.Len() != n {
		t.Fatal("ticks after the lease was lost")
	}
	lease.give()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if sink.Len() == n {
			return errors.New("not running again with its lease back")
		}
		return nil
	})
	lease.mu.Lock()
	released := lease.released
	lease.mu.Unlock()
	if released != 1 {
		t.Fatalf("released %d times, want once (after the lost run)", released)
	}
}
