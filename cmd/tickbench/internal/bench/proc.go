package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procSample is one reading of a process's /proc files.
type procSample struct {
	rssBytes int64
	cpuSec   float64 // user + system
	ok       bool
}

// clkTck is USER_HZ, 100 on every Linux architecture Go supports.
const clkTck = 100

// readProc reads VmRSS from /proc/<pid>/status and utime+stime from
// /proc/<pid>/stat. pid 0 reads nothing.
func readProc(pid int) procSample {
	if pid <= 0 {
		return procSample{}
	}
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s
	}
	for _, line := range bytes.Split(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(rest))
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.rssBytes = kb * 1024
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return s
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s
	}
	s.cpuSec = float64(ut+st) / clkTck
	s.ok = true
	return s
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit and returns
// the new soft limit.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}

// checkLoopback refuses any target that is not a loopback address: the
// generator opens thousands of connections and must never point them at
// another machine.
func checkLoopback(ctx context.Context, host string) (net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return nil, fmt.Errorf("target %s is not a loopback address: tickbench only runs against this machine", host)
		}
		return ip, nil
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(lctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve %s: no address", host)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return nil, fmt.Errorf("target %s resolves to %s, not loopback: tickbench only runs against this machine", host, a.IP)
		}
	}
	return addrs[0].IP, nil
}

// sourceIPs picks n client source addresses in 127.0.0.2.. for an IPv4
// loopback target (several sources multiply the ephemeral ports available
// for 10k+ connections). For an IPv6 target it returns nil (any source).
func sourceIPs(target net.IP, n int) []net.IP {
	if target.To4() == nil || n <= 0 {
		return nil
	}
	n = min(n, 250)
	out := make([]net.IP, n)
	for i := range out {
		out[i] = net.IPv4(127, 0, 0, byte(2+i))
	}
	return out
}

// pinPID applies a CPU list to every thread of pid with taskset.
func pinPID(ctx context.Context, pid int, cpus string) error {
	path, err := exec.LookPath("taskset")
	if err != nil {
		return errors.New("taskset not found: cannot pin the server")
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, path, "-a", "-pc", cpus, strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -pc %s %d: %v: %s", cpus, pid, err, bytes.TrimSpace(out))
	}
	return nil
}

// PinnedEnv marks a tickbench process already re-executed under taskset.
const PinnedEnv = "TICKBENCH_PINNED"

// ReexecPinned replaces the current process with itself under
// `taskset -c cpus` (so the Go runtime sizes GOMAXPROCS to the pinned
// CPUs), unless it already runs pinned. It returns only on failure or when
// nothing is to be done; the caller then runs unpinned.
func ReexecPinned(cpus string, args []string) error {
	if cpus == "" || os.Getenv(PinnedEnv) == "1" {
		return nil
	}
	path, err := exec.LookPath("taskset")
	if err != nil {
		return errors.New("taskset not found: running the generator unpinned")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append([]string{"taskset", "-c", cpus, self}, args...)
	return syscall.Exec(path, argv, append(os.Environ(), PinnedEnv+"=1"))
}
