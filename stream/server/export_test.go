package server

import "time"

// SetIdempotencyClock replaces the clock of s's idempotency window.
func SetIdempotencyClock(s *Server, now func() time.Time) {
	s.idem.mu.Lock()
	s.idem.now = now
	s.idem.mu.Unlock()
}
