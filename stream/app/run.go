package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/cluster"
	"github.com/tickstream/tickstream/stream/server"
	"github.com/tickstream/tickstream/stream/store"
)

// Run runs the tickstream server as the tickstream command does: it reads
// settings from args, the TICKSTREAM_* environment and the config file,
// starts the feeds (from feeds.DefaultRegistry, so a Go program that
// registered its own feed type can name it in the config), the bus and the
// HTTP server, and shuts them down gracefully when ctx ends. It returns
// ErrHelp after printing usage for --help.
func Run(ctx context.Context, args []string) error {
	s, err := LoadSettings(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	log := NewLogger(os.Stderr, s)
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return &SettingError{Setting: "addr", Source: "value " + s.Addr, Err: err}
	}
	return RunListener(ctx, s, ln, log)
}

// NewLogger builds the logger the settings ask for.
func NewLogger(w io.Writer, s Settings) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(s.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// RunListener runs the server on ln with settings s until ctx ends, then
// shuts down within shutdown_timeout_ms (see server.Server.Shutdown). It
// closes ln.
func RunListener(ctx context.Context, s Settings, ln net.Listener, log *slog.Logger) error {
	authz, err := authorizer(s)
	if err != nil {
		ln.Close()
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var node *cluster.Node
	var epoch string
	if s.NATS != "" {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		node, err = cluster.Open(octx, cluster.Config{URL: s.NATS, HistoryDepth: s.HistoryDepth, LeaseTTL: ms(s.NATSLeaseMS), Logger: log})
		cancel()
		if err != nil {
			ln.Close()
			return &SettingError{Setting: "nats", Source: "value " + strconv.Quote(s.NATS), Err: err}
		}
		epoch = node.Epoch()
		if s.DataDir != "" {
			// The store keeps this cluster epoch's seqs: another epoch's
			// store would contradict them.
			s.DataDir = filepath.Join(s.DataDir, "cluster-"+epoch)
		}
	}
	st, err := openStore(s, reg, log)
	if err != nil {
		if node != nil {
			node.Close()
		}
		ln.Close()
		return err
	}
	var busStore stream.Store
	if st != nil {
		busStore = st
		defer func() {
			if err := st.Close(); err != nil {
				log.Error("closing the store", "err", err)
			}
		}()
	}
	if node != nil {
		// Before the store closes: the node's consumer folds into the bus.
		defer node.Close()
	}
	bus, err := stream.NewBus(stream.BusConfig{
		Store:                  busStore,
		HistoryDepth:           s.HistoryDepth,
		CandleDepth:            s.CandleDepth,
		MaxTopics:              s.MaxTopics,
		DefaultThrottle:        throttleSetting(s.DefaultThrottleMS),
		MaxPendingBytes:        s.MaxPendingBytes,
		LagThrottle:            ms(s.LagThrottleMS),
		Heartbeat:              ms(s.HeartbeatMS),
		MaxTopicsPerSubscriber: s.MaxTopicsPerConn,
		MaxFutureSkew:          limitSetting(s.MaxFutureSkewMS),
		MaxTickAge:             limitSetting(s.MaxTickAgeMS),
		TSPolicy:               stream.TSPolicy(s.TSPolicy),
		MaxTopicsPerFeed:       s.MaxTopicsPerPublisher,
		TopicIdleEvict:         evictSetting(s.TopicIdleEvictMS),
		Metrics:                stream.NewMetrics(reg),
		Logger:                 log,
		Epoch:                  epoch,
		Forward:                forwarder(node),
	})
	if err != nil {
		ln.Close()
		return err
	}
	if node != nil {
		// Serve only with the cluster's history folded in.
		if err := node.Start(ctx, bus); err != nil {
			_ = bus.Close(context.Background())
			ln.Close()
			return err
		}
	}

	feedConfigs := s.Feeds
	if len(feedConfigs) == 0 {
		feedConfigs = []feeds.Config{{Name: "sim", Type: "sim"}}
	}
	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Feeds:      feedConfigs,
		Sink:       func(feed string) feeds.Sink { return bus.Sink(feed) },
		Registerer: reg,
		Logger:     log,
		Lease:      lease(node),
	})
	if err != nil {
		ln.Close()
		return err
	}

	publishFrom, err := server.ParsePublishFrom(s.PublishFrom)
	if err != nil {
		ln.Close()
		return &SettingError{Setting: "publish_from", Source: "value " + s.PublishFrom, Err: err}
	}
	origins, err := server.ParseOrigins(s.AllowedOrigins)
	if err != nil {
		ln.Close()
		return &SettingError{Setting: "allowed_origins", Source: "value " + s.AllowedOrigins, Err: err}
	}
	srv, err := server.New(server.Config{
		Bus:              bus,
		Feeds:            sup,
		PublishSink:      sup.ExternalSink("http", "http"),
		Gatherer:         reg,
		Logger:           log,
		DisableWebSocket: s.DisableWebSocket,
		WriteTimeout:     ms(s.WriteTimeoutMS),
		RetryBase:        ms(s.RetryMS),
		AcceptRate:       s.AcceptRate,
		AcceptBurst:      s.AcceptBurst,
		MaxFrameBytes:    s.MaxFrameBytes,
		SendBufferBytes:  sendBufferSetting(s.SendBufferBytes),
		Auth:             authz,

		PublishFrom:           publishFrom,
		AllowedOrigins:        origins,
		MaxTopicsPerPublisher: s.MaxTopicsPerPublisher,
		MaxConnsPerIP:         s.MaxConnsPerIP,
		MaxConns:              s.MaxConns,
		AcceptRatePerIP:       s.AcceptRatePerIP,
		AcceptBurstPerIP:      s.AcceptBurstPerIP,
		MaxMsgsPerSec:         s.MaxMsgsPerSec,
		MaxPublishPerSec:      s.MaxPublishPerSec,
		ReadTimeout:           ms(s.ReadTimeoutMS),
		TLSCertFile:           s.TLSCert,
		TLSKeyFile:            s.TLSKey,
		CursorShare:           cursorShare(node),
	})
	if err != nil {
		ln.Close()
		return err
	}

	stopPprof, err := startPprof(s.PprofAddr, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer stopPprof()

	sup.Start()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	scheme := "http://"
	if s.TLSCert != "" {
		scheme = "https://"
	}
	log.Info("tickstream listening", "addr", ln.Addr().String(), "url", scheme+displayAddr(ln.Addr()), "feeds", len(feedConfigs), "epoch", bus.Epoch(), "data_dir", s.DataDir, "nats", s.NATS)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		_ = sup.Close(context.Background())
		_ = bus.Close(context.Background())
		return fmt.Errorf("serve: %w", err)
	}

	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ms(s.ShutdownTimeoutMS))
	defer cancel()
	// Reverse order of start-up: HTTP (clients get 1001, stuck ones are
	// cut off), feeds, bus, all within shutdown_timeout_ms. Shutdown closes
	// the listener even when the timeout ends first, so Serve returns.
	errs := []error{srv.Shutdown(sctx)}
	if err := <-serveErr; err != nil && !errors.Is(err, server.ErrServerClosed) {
		errs = append(errs, err)
	}
	errs = append(errs, sup.Close(sctx), bus.Close(sctx))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// openStore opens the embedded store in data_dir (nil, nil when it is
// empty: memory only).
func openStore(s Settings, reg prometheus.Registerer, log *slog.Logger) (*store.Store, error) {
	if s.DataDir == "" {
		return nil, nil
	}
	age, err := s.retentionAge()
	if err != nil {
		return nil, err
	}
	always, every, err := s.syncPolicy()
	if err != nil {
		return nil, err
	}
	st, err := store.Open(store.Options{
		Dir:            s.DataDir,
		SyncAlways:     always,
		SyncInterval:   every,
		RetentionTicks: retentionTicks(s),
		RetentionAge:   age,
		MaxBytes:       int64(s.StoreMaxBytes),
		Registerer:     reg,
		Logger:         log,
	})
	if err != nil {
		return nil, &SettingError{Setting: "data_dir", Source: "value " + strconv.Quote(s.DataDir), Err: err}
	}
	return st, nil
}

// retentionTicks is retention_ticks, at least history_depth: the store
// keeps what memory does, so that a restart finds it.
func retentionTicks(s Settings) int {
	if s.RetentionTicks == 0 {
		return 0
	}
	return max(s.RetentionTicks, s.HistoryDepth)
}

func displayAddr(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		return fmt.Sprintf("localhost:%d", ta.Port)
	}
	return a.String()
}

// throttleSetting maps default_throttle_ms to BusConfig.DefaultThrottle,
// where zero means "the default" and a negative value means every tick.
func throttleSetting(ms int) time.Duration {
	if ms == 0 {
		return -1
	}
	return time.Duration(ms) * time.Millisecond
}

// evictSetting maps topic_idle_evict_ms to BusConfig.TopicIdleEvict, where
// zero means "the default" and a negative value means never.
func evictSetting(ms int) time.Duration {
	if ms == 0 {
		return -1
	}
	return time.Duration(ms) * time.Millisecond
}

// sendBufferSetting maps send_buffer_bytes to Config.SendBufferBytes, where
// zero means "the default" and a negative value means autotuning.
func sendBufferSetting(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// authorizer builds the token verifier the auth settings ask for: nil
// when auth is off. A key that cannot be loaded is a SettingError naming
// its setting.
func authorizer(s Settings) (*auth.Authorizer, error) {
	if s.Auth != "on" {
		return nil, nil
	}
	a, err := auth.New(auth.Config{
		HS256Secret:     []byte(s.AuthHS256Secret),
		HS256SecretFile: s.AuthHS256SecretFile,
		PublicKeyFile:   s.AuthPublicKeyFile,
		JWKSFile:        s.AuthJWKSFile,
		ReloadInterval:  time.Duration(s.AuthReloadMS) * time.Millisecond,
	})
	if err != nil {
		setting, value := "auth", "on"
		for _, kv := range [][2]string{{"auth_hs256_secret_file", s.AuthHS256SecretFile}, {"auth_public_key_file", s.AuthPublicKeyFile}, {"auth_jwks_file", s.AuthJWKSFile}} {
			if kv[1] != "" && strings.Contains(err.Error(), kv[1]) {
				setting, value = kv[0], kv[1]
				break
			}
		}
		return nil, &SettingError{Setting: setting, Source: "value " + strconv.Quote(value), Err: err}
	}
	return a, nil
}

// limitSetting maps a ms limit setting to BusConfig's: -1 (no limit) is
// 0, and 0 (no tolerance at all) is 1 ns, which compares as 0 ms.
func limitSetting(ms int) time.Duration {
	switch {
	case ms < 0:
		return 0
	case ms == 0:
		return time.Nanosecond
	}
	return time.Duration(ms) * time.Millisecond
}

// forwarder and lease are the cluster's hooks, nil without one (a nil
// *cluster.Node must not become a non-nil interface).
func forwarder(n *cluster.Node) stream.Forwarder {
	if n == nil {
		return nil
	}
	return n
}

func lease(n *cluster.Node) feeds.Lease {
	if n == nil {
		return nil
	}
	return n
}

func cursorShare(n *cluster.Node) server.CursorShare {
	if n == nil {
		return nil
	}
	return n
}

// startPprof serves net/http/pprof (CPU, heap, goroutine, block, mutex
// and allocs profiles, execution traces) on addr (loopback, checked by
// validate) until the returned stop is called; "" serves nothing. It uses
// its own mux, so nothing else is exposed there and the main listener
// never serves the profiler.
func startPprof(addr string, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &SettingError{Setting: "pprof_addr", Source: "value " + addr, Err: err}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln)
	}()
	// Block and mutex profiles are sampled only while the profiler is on:
	// blocking events of 10 µs or more, one in 10 mutex contentions.
	runtime.SetBlockProfileRate(10_000)
	runtime.SetMutexProfileFraction(10)
	log.Info("pprof listening", "url", "http://"+ln.Addr().String()+"/debug/pprof/")
	return func() {
		_ = hs.Close()
		<-done
		runtime.SetBlockProfileRate(0)
		runtime.SetMutexProfileFraction(0)
	}, nil
}
