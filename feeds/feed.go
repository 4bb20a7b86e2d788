package feeds

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Source is a named source of ticks.
type Source interface {
	// Name is the feed's name from the config (unique per server).
	Name() string
	// Run publishes ticks into out until ctx is cancelled, then returns
	// nil. Any other return is a failure; the supervisor restarts the
	// feed with backoff.
	Run(ctx context.Context, out Sink) error
}

// Sink is where a feed publishes ticks. Publish never blocks on
// subscribers. The tick is copied; the caller may reuse it.
//
// The error contract, which every feed follows (feeds.Deliver applies it):
//
//   - nil: the tick was accepted.
//   - a *TickError: this one tick was refused (invalid, or over a limit of
//     the bus: ErrOverLimit). The feed skips it and goes on with the next
//     one; it never fails or restarts because of it, which would publish
//     what it already sent again. The supervisor's sink counts the drop
//     for the feed (Status.Dropped, LastDropReason).
//   - an error wrapping ErrClosed: the bus is closed for good. The feed
//     stops: Run returns nil (the supervisor also treats a returned
//     ErrClosed as the end of the feed, not as a failure).
//
// A Sink returns nothing else; a feed that gets another error returns it
// from Run and is restarted.
type Sink interface {
	Publish(Tick) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Tick) error

// Publish calls f(t).
func (f SinkFunc) Publish(t Tick) error { return f(t) }

// Config is one entry of the config file's feeds: list.
//
//	feeds:
//	  - name: btc
//	    type: replay
//	    options: {file: testdata/trades.csv, speed: 10}
type Config struct {
	// Name identifies the feed in logs, metrics and /api/feeds. Zero value
	// means the type name.
	Name string `yaml:"name"`
	// Type is the registered source type (sim, replay, websocket, nats, …).
	Type string `yaml:"type"`
	// Backup names another feed that takes over this feed's topics while
	// this one is down. Zero value means none.
	Backup string `yaml:"backup"`
	// Options are the type's own settings, decoded by the factory with
	// DecodeOptions.
	Options yaml.Node `yaml:"options"`
}

// DecodeOptions decodes the feed's options into v, refusing keys that v
// does not have. A zero Options decodes to nothing and leaves v as is.
func (c Config) DecodeOptions(v any) error {
	if c.Options.Kind == 0 {
		return nil
	}
	b, err := yaml.Marshal(&c.Options)
	if err != nil {
		return fmt.Errorf("feed %q: options: %w", c.Name, err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("feed %q: options: %w", c.Name, err)
	}
	return nil
}

// Factory builds a Source from its config. It validates the options and
// returns an error naming the bad setting; it does no network I/O.
type Factory func(cfg Config) (Source, error)

// Registry maps type names to factories.
type Registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
}

// ErrUnknownType is returned (wrapped) for a type nobody registered.
var ErrUnknownType = errors.New("feeds: unknown source")

// Register adds a factory under name. It panics if name is empty or taken,
// as both are programming errors found at init time.
func (r *Registry) Register(name string, f Factory) {
	if name == "" || f == nil {
		panic("feeds: Register with empty name or nil factory")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.factories == nil {
		r.factories = make(map[string]Factory)
	}
	if _, dup := r.factories[name]; dup {
		panic(fmt.Sprintf("feeds: Register called twice for %q", name))
	}
	r.factories[name] = f
}

// New builds a source of cfg.Type.
func (r *Registry) New(cfg Config) (Source, error) {
	if cfg.Name == "" {
		cfg.Name = cfg.Type
	}
	r.mu.RLock()
	f := r.factories[cfg.Type]
	r.mu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("feed %q: %w %q (known: %s)", cfg.Name, ErrUnknownType, cfg.Type, strings.Join(r.Types(), ", "))
	}
	return f(cfg)
}

// Types lists the registered type names, sorted.
func (r *Registry) Types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultRegistry is the registry that Register and New use.
var DefaultRegistry = &Registry{}

// Register adds a factory to DefaultRegistry. Call it from init.
func Register(name string, f Factory) { DefaultRegistry.Register(name, f) }

// New builds a source from DefaultRegistry.
func New(cfg Config) (Source, error) { return DefaultRegistry.New(cfg) }

// State is a supervised feed's state.
type State string

// Feed states as shown in /api/feeds and /readyz.
const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRestarting State = "restarting"
	StateFailed     State = "failed"
	StateStopped    State = "stopped"
	// StateStandby is a backup feed waiting for its primary to go down.
	StateStandby State = "standby"
	// StateDegraded is a running feed whose messages are all being
	// dropped: within the last DegradedWindow (10 s) it dropped at least
	// DegradedMin (10) messages and had none accepted. It is running
	// again as soon as a tick is accepted, or once a whole window passes
	// with fewer drops.
	StateDegraded State = "degraded"
)

// Status is what /api/feeds shows for one feed.
type Status struct {
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	State     State     `json:"state"`
	LastError string    `json:"last_error,omitempty"`
	Restarts  int       `json:"restarts"`
	Ticks     uint64    `json:"ticks"`
	LastTick  time.Time `json:"last_tick,omitzero"`
	// LagMS is accept time minus source time of the last tick.
	LagMS  int64  `json:"lag_ms"`
	Backup string `json:"backup,omitempty"`
	// ActiveBackup is true while this feed's backup is standing in for it.
	ActiveBackup bool `json:"backup_active,omitempty"`
	// StandsInFor lists the primaries a running backup feed is covering:
	// while it is not empty, the feed's ticks stand in for theirs (for
	// example simulated prices for a failed exchange feed), and a
	// dashboard should say so. Supervisor.SourceOf tells which feed last
	// published a topic.
	StandsInFor []string `json:"stands_in_for,omitempty"`
	// Dropped counts the messages this feed received but that never
	// became an accepted tick: ticks refused by the bus and messages the
	// adapter could not map. They are skipped, never retried.
	Dropped uint64 `json:"dropped"`
	// LastDropReason is the DropReason of the last drop (a short label:
	// unmapped, bad_topic, …), and LastDropError what exactly was wrong.
	LastDropReason DropReason `json:"last_drop_reason,omitempty"`
	LastDropError  string     `json:"last_drop_error,omitempty"`
	// LastDrop is when the last drop happened.
	LastDrop time.Time `json:"last_drop,omitzero"`
	// Failures counts consecutive failed runs; it resets when the feed is
	// up again (it published, or ran a while without error).
	Failures int `json:"failures,omitempty"`
	// External is true for a passive feed (e.g. HTTP publish) that the
	// supervisor counts but does not run.
	External bool `json:"external,omitempty"`
}

// StatusReporter is what the HTTP server needs from whoever runs the feeds.
type StatusReporter interface {
	// Statuses returns every feed's status, sorted by name.
	Statuses() []Status
	// Ready reports whether every feed is running (for /readyz).
	Ready() bool
}

// SourceReporter is what a StatusReporter may also do (the Supervisor
// does): tell which feed last published a topic, and the primaries that
// feed is standing in for right now when it is a backup covering failed
// feeds (see Supervisor.SourceOf). The HTTP server checks for it with a
// type assertion and shows both in /api/topics (feed, backup_for).
type SourceReporter interface {
	SourceOf(topic string) (feed string, standsInFor []string)
}

// OptionError is a bad option of one feed. Its text names both, so that a
// bad config stops start-up with one line that says what to fix:
//
//	feed "btc": options.rate -1: want 0 < rate <= 100000
type OptionError struct {
	Feed   string
	Option string
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("feed %q: options.%s: %s", e.Feed, e.Option, e.Reason)
}

// BadOption returns an *OptionError for option of feed.
func BadOption(feed, option, format string, args ...any) error {
	return &OptionError{Feed: feed, Option: option, Reason: fmt.Sprintf(format, args...)}
}

// FactoryFor makes a Factory from a constructor that takes the feed's name
// and its decoded options struct O; the options are decoded strictly with
// DecodeOptions first.
func FactoryFor[O any, S Source](build func(name string, o O) (S, error)) Factory {
	return func(cfg Config) (Source, error) {
		var o O
		if err := cfg.DecodeOptions(&o); err != nil {
			return nil, err
		}
		return build(cfg.Name, o)
	}
}
