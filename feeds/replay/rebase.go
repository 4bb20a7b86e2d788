package replay

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/tickstream/tickstream/feeds"
)

// RebaseUnit is what a rebase offset is a whole multiple of: the largest
// candle interval, so that a rebased file keeps its bars (a trade at
// 09:30:59.999 stays in the 09:30 minute, and the same hour).
const RebaseUnit = time.Hour

// rebaseCluster is how close (in source time) the first ticks of replay
// feeds must be to share one offset.
const rebaseCluster = time.Hour

// maxProbeTicks bounds how far NewSource reads to find a file's first
// timestamp.
const maxProbeTicks = 1000

// A rebaseGroup is the rebasing replay sources built before any of them
// ran: the feeds of one config, which a supervisor builds all at once
// before it starts them. The first Run of a member fixes the group's
// anchor (that Run's start time) and every member's offset:
//
//   - members are clustered by source time: the member with the earliest
//     first tick and every member whose first tick is less than
//     rebaseCluster later share one offset (trades and quotes of one
//     session); the rest cluster the same way among themselves (a 2013
//     file and a 2024 file in one config each keep their own);
//   - a cluster's offset is anchor − latest first tick of the cluster,
//     rounded down to a whole RebaseUnit, so that no member starts in the
//     future and all of them keep their bars.
//
// Offsets never change afterwards: a restarted or looping feed keeps its
// offset, so it does not jump in time.
type rebaseGroup struct {
	mu      sync.Mutex
	members []*Source
	offsets map[*Source]int64 // nil until anchored
}

var rebasing struct {
	mu   sync.Mutex
	open *rebaseGroup // the group new sources join, until one of it runs
}

// joinRebaseGroup adds s to the open group.
func joinRebaseGroup(s *Source) *rebaseGroup {
	rebasing.mu.Lock()
	defer rebasing.mu.Unlock()
	if rebasing.open == nil {
		rebasing.open = &rebaseGroup{}
	}
	g := rebasing.open
	g.mu.Lock()
	g.members = append(g.members, s)
	g.mu.Unlock()
	return g
}

// offset is s's rebase offset in ms, anchoring the group at now if this is
// its first Run.
func (g *rebaseGroup) offset(s *Source, now time.Time) int64 {
	rebasing.mu.Lock()
	if rebasing.open == g {
		rebasing.open = nil // later sources start a new group
	}
	rebasing.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.offsets == nil {
		g.offsets = rebaseOffsets(g.members, now.UnixMilli())
	}
	return g.offsets[s]
}

// rebaseOffsets computes the offsets of members anchored at anchor (Unix
// ms); see rebaseGroup.
func rebaseOffsets(members []*Source, anchor int64) map[*Source]int64 {
	sorted := slices.Clone(members)
	slices.SortStableFunc(sorted, func(a, b *Source) int { return compareInt(a.firstTS, b.firstTS) })
	offsets := make(map[*Source]int64, len(members))
	unit := RebaseUnit.Milliseconds()
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j].firstTS-sorted[i].firstTS < rebaseCluster.Milliseconds() {
			j++
		}
		latest := sorted[j-1].firstTS
		off := floorDiv(anchor-latest, unit) * unit
		for _, m := range sorted[i:j] {
			offsets[m] = off
		}
		i = j
	}
	return offsets
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

var errProbeDone = errors.New("probe done")

// probeFirstTS returns the first non-zero timestamp of the file, or 0 if
// the first maxProbeTicks ticks have none.
func (s *Source) probeFirstTS() (int64, error) {
	var first int64
	n := 0
	err := s.pass(context.Background(), nil, func(t *feeds.Tick) error {
		if t.TS != 0 {
			first = t.TS
			return errProbeDone
		}
		if n++; n >= maxProbeTicks {
			return errProbeDone
		}
		return nil
	})
	if err != nil && !errors.Is(err, errProbeDone) {
		return 0, err
	}
	return first, nil
}
