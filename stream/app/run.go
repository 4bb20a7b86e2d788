package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	bus, err := stream.NewBus(stream.BusConfig{
		HistoryDepth:           s.HistoryDepth,
		CandleDepth:            s.CandleDepth,
		MaxTopics:              s.MaxTopics,
		DefaultThrottle:        throttleSetting(s.DefaultThrottleMS),
		MaxPendingBytes:        s.MaxPendingBytes,
		LagThrottle:            ms(s.LagThrottleMS),
		Heartbeat:              ms(s.HeartbeatMS),
		MaxTopicsPerSubscriber: s.MaxTopicsPerConn,
		MaxTopicsPerFeed:       s.MaxTopicsPerPublisher,
		TopicIdleEvict:         evictSetting(s.TopicIdleEvictMS),
		Metrics:                stream.NewMetrics(reg),
		Logger:                 log,
	})
	if err != nil {
		ln.Close()
		return err
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

		PublishFrom:           publishFrom,
		AllowedOrigins:        origins,
		MaxTopicsPerPublisher: s.MaxTopicsPerPublisher,
		MaxConnsPerIP:         s.MaxConnsPerIP,
		MaxConns:              s.MaxConns,
		AcceptRatePerIP:       s.AcceptRatePerIP,
		AcceptBurstPerIP:      s.AcceptBurstPerIP,
		MaxMsgsPerSec:         s.MaxMsgsPerSec,
		ReadTimeout:           ms(s.ReadTimeoutMS),
		TLSCertFile:           s.TLSCert,
		TLSKeyFile:            s.TLSKey,
	})
	if err != nil {
		ln.Close()
		return err
	}

	sup.Start()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	scheme := "http://"
	if s.TLSCert != "" {
		scheme = "https://"
	}
	log.Info("tickstream listening", "addr", ln.Addr().String(), "url", scheme+displayAddr(ln.Addr()), "feeds", len(feedConfigs), "epoch", bus.Epoch())

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
