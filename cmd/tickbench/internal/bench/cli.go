package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"
)

// ParseArgs reads the command line into a Config. It also returns the
// generator's CPU list (applied by the caller before Run) and whether to
// print per-client rows.
func ParseArgs(args []string, stderr io.Writer) (cfg Config, pinGen string, perClient bool, err error) {
	fs := flag.NewFlagSet("tickbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "tickbench: load generator for tickstream (loopback only).\n\nusage: tickbench --url http://127.0.0.1:8080 --pid PID [flags]")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "server base URL (must be loopback)")
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws or sse")
	fs.IntVar(&cfg.Clients, "clients", 100, "simulated clients (connections)")
	fs.IntVar(&cfg.Topics, "topics", 1, "K topics")
	fs.IntVar(&cfg.PerClient, "per-client", 1, "S topics per client, spread over the K")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", "bench.T", "topic name prefix (use names no other feed publishes)")
	fs.IntVar(&cfg.ThrottleMS, "throttle-ms", 0, "subscription throttle_ms")
	fs.Float64Var(&cfg.Rate, "rate", 100, "ticks per second in total over all topics (0 = as fast as the server accepts them)")
	fs.DurationVar(&cfg.BatchEvery, "batch-every", 10*time.Millisecond, "publish interval; each request carries the ticks due")
	fs.IntVar(&cfg.MaxBatch, "max-batch", 2000, "most ticks per publish request")
	fs.IntVar(&cfg.Publishers, "publishers", 4, "concurrent publishers (each owns whole topics, so per-topic order is kept)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "publishing time (idle mode: holding time)")
	fs.DurationVar(&cfg.Connect, "connect-timeout", 60*time.Second, "deadline to connect and subscribe every client")
	fs.DurationVar(&cfg.Drain, "drain", 5*time.Second, "longest wait after publishing (plus one throttle interval) for deliveries to catch up")
	fs.BoolVar(&cfg.Idle, "idle", false, "idle mode: connect, subscribe nothing (or --idle-topic), measure server RSS per connection")
	fs.StringVar(&cfg.IdleTopic, "idle-topic", "", "idle mode: one quiet topic every client subscribes to")
	fs.IntVar(&cfg.PID, "pid", 0, "server pid: RSS and CPU are read from /proc/<pid>")
	fs.StringVar(&cfg.PinServer, "pin-server", "", "CPU list for the server pid (taskset -a -pc)")
	fs.StringVar(&pinGen, "pin-generator", "", "CPU list for tickbench itself (re-exec under taskset -c)")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 8, "client source addresses 127.0.0.2.. (IPv4 loopback targets)")
	fs.IntVar(&cfg.DialParallel, "dial-parallel", 64, "connection attempts in flight")
	fs.StringVar(&cfg.Label, "label", "", "scenario label carried into the JSON summary")
	fs.BoolVar(&perClient, "per-client-rows", false, "print a row per client that lost, duplicated or reordered (at most 50)")
	if err := fs.Parse(args); err != nil {
		return cfg, "", false, err
	}
	if fs.NArg() > 0 {
		return cfg, "", false, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, pinGen, perClient, nil
}

// Main is the tickbench command: it returns the exit status. It exits the
// process itself if the run overstays its hard cap (a stuck socket must
// not keep a benchmark script waiting for ever).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, pinGen, perClient, err := ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "tickbench:", err)
		return 2
	}
	if err := ReexecPinned(pinGen, args); err != nil {
		fmt.Fprintln(stderr, "tickbench:", err)
	}
	cfg.Log = stderr
	hardCap := cfg.HardCap()
	watchdog := time.AfterFunc(hardCap+15*time.Second, func() {
		fmt.Fprintf(stderr, "tickbench: still running after the hard cap %v; exiting\n", hardCap+15*time.Second)
		os.Exit(3)
	})
	defer watchdog.Stop()
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "tickbench:", err)
		return 1
	}
	WriteTable(stdout, res, perClient)
	line, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", line)
	return 0
}

// WriteTable prints a run's result for people.
func WriteTable(w io.Writer, r *Result, perClient bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s\t"+f+"\n", append([]any{k}, a...)...) }
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	if r.Label != "" {
		row("scenario", "%s", r.Label)
	}
	row("mode", "%s over %s", r.Mode, r.Transport)
	row("clients", "%d (connected %d, subscribed %d in %.1fs)", r.Clients, r.Connected, r.Ready, r.ConnectSec)
	if r.Mode == "load" {
		row("topics", "%d, %d per client, throttle %d ms", r.Topics, r.PerClient, r.ThrottleMS)
		target := fmt.Sprintf("%.0f/s", r.TargetRate)
		if r.TargetRate == 0 {
			target = "max"
		}
		row("published", "%d ticks in %.1fs = %.0f/s (target %s; refused %d, failed %d, behind %d)", r.Published, r.PublishSec, r.PublishRate, target, r.Refused, r.PubFailed, r.PubBehind)
		row("delivered", "%d updates in %.1fs = %.0f/s (covering %d ticks = %.0f/s; expected %d)", r.Delivered, r.MeasureSec, r.DeliveredRate, r.Covered, r.CoveredRate, r.Expected)
		row("latency", "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms", r.P50ms, r.P90ms, r.P99ms, r.MaxMs)
		row("missing", "%d ticks (%d clients, at most %d per client)", r.Missing, r.ClientsLoss, r.MaxMissingCli)
		row("duplicate", "%d ticks (%d clients, at most %d per client)", r.Dup, r.ClientsDup, r.MaxDupCli)
		row("out of order", "%d updates (%d clients, at most %d per client)", r.OutOfOrder, r.ClientsOOO, r.MaxOOOCli)
		row("ctr mismatch", "%d", r.CtrMismatch)
		row("lagging status", "%d", r.Lagging)
	}
	row("client errors", "%d (error messages %d)", r.ClientErrors, r.ErrMsgs)
	if r.FirstError != "" {
		row("first error", "%.200s", r.FirstError)
	}
	if r.ServerMeasured {
		row("server RSS", "%.1f MiB (before clients %.1f MiB) = %.1f KiB/conn", mib(r.ServerRSS), mib(r.ServerRSSBase), r.RSSPerConn/1024)
		if r.Mode == "load" {
			row("server CPU", "%.2f s (%.2f cores) = %.2f CPU-s per million deliveries", r.ServerCPUSec, r.ServerCPUUtil, r.CPUPerMillion)
		} else {
			row("server CPU", "%.2f s (%.2f cores)", r.ServerCPUSec, r.ServerCPUUtil)
		}
	} else {
		row("server", "not measured (no --pid)")
	}
	row("generator CPU", "%.2f s", r.GenCPUSec)
	if perClient {
		n := 0
		for _, c := range r.PerClientRows {
			if c.Missing+c.Dup+c.OOO == 0 && c.Err == "" {
				continue
			}
			if n++; n > 50 {
				break
			}
			row(fmt.Sprintf("client %d", c.ID), "updates %d covered %d missing %d dup %d ooo %d lagging %d %s", c.Updates, c.Covered, c.Missing, c.Dup, c.OOO, c.Lagging, c.Err)
		}
	}
	tw.Flush()
}
