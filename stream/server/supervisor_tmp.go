package server

// TEMPORARY stand-in until feeds.Supervisor lands.

import (
	"context"
	"sync"

	"github.com/tickstream/tickstream/feeds"
)

type tmpSupervisor struct {
	srcs   []feeds.Source
	sink   func(string) feeds.Sink
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newSupervisor(cfg feeds.SupervisorConfig) (*tmpSupervisor, error) {
	s := &tmpSupervisor{sink: cfg.Sink}
	for _, c := range cfg.Feeds {
		src, err := feeds.New(c)
		if err != nil {
			return nil, err
		}
		s.srcs = append(s.srcs, src)
	}
	return s, nil
}

func (s *tmpSupervisor) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for _, src := range s.srcs {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = src.Run(ctx, s.sink(src.Name())) }()
	}
}
func (s *tmpSupervisor) Close(ctx context.Context) error { s.cancel(); s.wg.Wait(); return nil }
func (s *tmpSupervisor) Statuses() []feeds.Status        { return nil }
func (s *tmpSupervisor) Ready() bool                     { return true }
func (s *tmpSupervisor) ExternalSink(name, typ string) feeds.Sink {
	return s.sink(name)
}
