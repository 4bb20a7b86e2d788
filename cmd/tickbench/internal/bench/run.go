package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config is one tickbench run.
type Config struct {
	URL          string        // server base URL, http://127.0.0.1:8080
	Transport    string        // "ws" or "sse"
	Clients      int           // simulated browsers
	Topics       int           // K topics: <prefix>0 .. <prefix>K-1
	PerClient    int           // S topics per client (spread over the K)
	TopicPrefix  string        // topic name prefix
	ThrottleMS   int           // subscription throttle
	Rate         float64       // ticks/s in total; 0 = as fast as the server takes them
	BatchEvery   time.Duration // publish interval (rate > 0)
	MaxBatch     int           // ticks per request at most
	Publishers   int           // concurrent publishers (each owns whole topics)
	Duration     time.Duration // publishing time (idle: holding time)
	Connect      time.Duration // deadline to connect and subscribe every client
	Drain        time.Duration // longest wait after publishing for deliveries to catch up
	Idle         bool          // connect only: no publishing
	IdleTopic    string        // idle clients subscribe to this one quiet topic ("" = none)
	PID          int           // server pid for RSS/CPU (0 = not measured)
	PinServer    string        // CPU list applied to PID with taskset
	SourceIPs    int           // client source addresses 127.0.0.2..
	DialParallel int           // connection attempts in flight
	Label        string        // scenario name carried into the summary
	Log          io.Writer     // progress lines (nil = none)
}

func (c *Config) setDefaults() {
	if c.Transport == "" {
		c.Transport = "ws"
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = "bench.T"
	}
	if c.Topics <= 0 {
		c.Topics = 1
	}
	if c.PerClient <= 0 {
		c.PerClient = 1
	}
	c.PerClient = min(c.PerClient, c.Topics)
	if c.BatchEvery <= 0 {
		c.BatchEvery = 10 * time.Millisecond
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 2000
	}
	if c.Publishers <= 0 {
		c.Publishers = 4
	}
	c.Publishers = min(c.Publishers, c.Topics)
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Connect <= 0 {
		c.Connect = 60 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.SourceIPs <= 0 {
		c.SourceIPs = 8
	}
	if c.DialParallel <= 0 {
		c.DialParallel = 64
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// HardCap is the longest a run with this config may take: connect, publish,
// drain, and margin for closing.
func (c Config) HardCap() time.Duration {
	c.setDefaults()
	return c.Connect + c.Duration + c.Drain + time.Duration(c.ThrottleMS)*time.Millisecond + 30*time.Second
}

func (c *Config) validate() error {
	switch {
	case c.Transport != "ws" && c.Transport != "sse":
		return fmt.Errorf("transport %q: want ws or sse", c.Transport)
	case c.Clients < 0 || c.Clients > 200000:
		return fmt.Errorf("clients %d: want 0..200000", c.Clients)
	case c.Topics > 100000:
		return fmt.Errorf("topics %d: want at most 100000", c.Topics)
	case c.Rate < 0:
		return fmt.Errorf("rate %v: want >= 0", c.Rate)
	case c.ThrottleMS < 0 || c.ThrottleMS > 60000:
		return fmt.Errorf("throttle %d: want 0..60000", c.ThrottleMS)
	case c.Duration > time.Hour:
		return fmt.Errorf("duration %v: at most 1h", c.Duration)
	}
	return nil
}

// Result is a run's summary; it is printed as one line of JSON.
type Result struct {
	Label      string  `json:"label,omitempty"`
	Transport  string  `json:"transport"`
	Mode       string  `json:"mode"` // "load" or "idle"
	Clients    int     `json:"clients"`
	Connected  int     `json:"connected"`
	Ready      int     `json:"ready"`
	Topics     int     `json:"topics"`
	PerClient  int     `json:"per_client"`
	ThrottleMS int     `json:"throttle_ms"`
	TargetRate float64 `json:"target_rate"`

	ConnectSec  float64 `json:"connect_s"`
	PublishSec  float64 `json:"publish_s"`
	MeasureSec  float64 `json:"measure_s"` // publish start to last delivery caught up (or drain deadline)
	Published   int64   `json:"published"` // ticks accepted
	PublishRate float64 `json:"publish_rate"`
	Refused     int64   `json:"refused"`
	PubFailed   int64   `json:"publish_failed"`
	PubBehind   int64   `json:"publish_behind"`

	Delivered     uint64  `json:"delivered"`      // update messages
	DeliveredRate float64 `json:"delivered_rate"` // updates/s
	Covered       uint64  `json:"covered"`        // ticks covered (Σ agg.n, distinct)
	CoveredRate   float64 `json:"covered_rate"`
	Expected      uint64  `json:"expected"` // ticks every client should cover
	P50ms         float64 `json:"p50_ms"`
	P90ms         float64 `json:"p90_ms"`
	P99ms         float64 `json:"p99_ms"`
	MaxMs         float64 `json:"max_ms"`

	Missing       uint64 `json:"missing"`
	Dup           uint64 `json:"dup"`
	OutOfOrder    uint64 `json:"out_of_order"`
	CtrMismatch   uint64 `json:"ctr_mismatch"`
	ClientsLoss   int    `json:"clients_missing"`
	ClientsDup    int    `json:"clients_dup"`
	ClientsOOO    int    `json:"clients_out_of_order"`
	MaxMissingCli uint64 `json:"max_missing_per_client"`
	MaxDupCli     uint64 `json:"max_dup_per_client"`
	MaxOOOCli     uint64 `json:"max_out_of_order_per_client"`
	Lagging       uint64 `json:"lagging_status"`
	ErrMsgs       uint64 `json:"error_msgs"`
	ClientErrors  int    `json:"client_errors"`
	FirstError    string `json:"first_error,omitempty"`

	ServerRSSBase  int64   `json:"server_rss_base"`
	ServerRSS      int64   `json:"server_rss"`
	RSSPerConn     float64 `json:"rss_per_conn"`
	ServerCPUSec   float64 `json:"server_cpu_s"`
	CPUPerMillion  float64 `json:"server_cpu_s_per_m"`
	ServerCPUUtil  float64 `json:"server_cpu_util"` // cores busy over the measure window
	GenCPUSec      float64 `json:"gen_cpu_s"`
	ServerMeasured bool    `json:"server_measured"`

	PerClientRows []ClientRow `json:"-"`
}

// ClientRow is one client's accounting.
type ClientRow struct {
	ID                         int
	Updates                    uint64
	Covered, Missing, Dup, OOO uint64
	Lagging                    uint64
	Err                        string
}

func topicName(prefix string, i int) string { return fmt.Sprintf("%s%d", prefix, i) }

// clientTopics spreads S of K topics: client i gets i*S .. i*S+S-1 mod K.
func clientTopics(prefix string, i, k, s int) []string {
	out := make([]string, s)
	for j := range out {
		out[j] = topicName(prefix, (i*s+j)%k)
	}
	return out
}

// Run runs one benchmark. ctx bounds everything.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancelAll := context.WithTimeout(ctx, cfg.HardCap())
	defer cancelAll()
	logf := func(format string, a ...any) { fmt.Fprintf(cfg.Log, "tickbench: "+format+"\n", a...) }

	base, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("url %q: want http://127.0.0.1:PORT", cfg.URL)
	}
	target, err := checkLoopback(ctx, base.Hostname())
	if err != nil {
		return nil, err
	}
	if lim, err := raiseNoFile(); err != nil {
		logf("cannot raise RLIMIT_NOFILE: %v", err)
	} else if need := uint64(cfg.Clients) + 256; lim < need {
		logf("RLIMIT_NOFILE is %d, %d clients need about %d (raise the hard limit: ulimit -Hn)", lim, cfg.Clients, need)
	}
	if cfg.PinServer != "" && cfg.PID > 0 {
		if err := pinPID(ctx, cfg.PID, cfg.PinServer); err != nil {
			logf("%v", err)
		} else {
			logf("server pid %d pinned to CPUs %s", cfg.PID, cfg.PinServer)
		}
	}

	// One transport per source address.
	srcs := sourceIPs(target, cfg.SourceIPs)
	var transports []*http.Transport
	mk := func(local net.IP) *http.Transport {
		d := &net.Dialer{Timeout: 10 * time.Second}
		if local != nil {
			d.LocalAddr = &net.TCPAddr{IP: local}
		}
		return &http.Transport{
			DialContext: d.DialContext, DisableCompression: true, ForceAttemptHTTP2: false,
			MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: 30 * time.Second, IdleConnTimeout: 30 * time.Second,
		}
	}
	if len(srcs) == 0 {
		transports = append(transports, mk(nil))
	}
	for _, ip := range srcs {
		transports = append(transports, mk(ip))
	}
	defer func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()
	clientsHC := make([]*http.Client, len(transports))
	for i, t := range transports {
		clientsHC[i] = &http.Client{Transport: t}
	}
	pubHC := &http.Client{Transport: mk(nil)}
	defer pubHC.Transport.(*http.Transport).CloseIdleConnections()
	baseStr := base.String()

	res := &Result{
		Label: cfg.Label, Transport: cfg.Transport, Mode: "load", Clients: cfg.Clients, Topics: cfg.Topics,
		PerClient: cfg.PerClient, ThrottleMS: cfg.ThrottleMS, TargetRate: cfg.Rate,
	}
	if cfg.Idle {
		res.Mode, res.Topics, res.PerClient, res.TargetRate = "idle", 0, 0, 0
	}

	// Prime every topic the clients will subscribe to.
	var allTopics []string
	switch {
	case !cfg.Idle:
		for i := 0; i < cfg.Topics; i++ {
			allTopics = append(allTopics, topicName(cfg.TopicPrefix, i))
		}
	case cfg.IdleTopic != "":
		allTopics = []string{cfg.IdleTopic}
		res.Topics, res.PerClient = 1, 1
	}
	for i := 0; i < len(allTopics); i += 5000 {
		if err := prime(ctx, pubHC, baseStr, allTopics[i:min(i+5000, len(allTopics))]); err != nil {
			return nil, err
		}
	}

	selfBase := readProc(os.Getpid())
	srvBase := readProc(cfg.PID)
	res.ServerRSSBase = srvBase.rssBytes

	// Connect and subscribe.
	sh := &shared{hists: make([]*Histogram, 64)}
	for i := range sh.hists {
		sh.hists[i] = new(Histogram)
	}
	clients := make([]*client, cfg.Clients)
	runCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	dialCtx, cancelDial := context.WithTimeout(ctx, cfg.Connect)
	defer cancelDial()
	sem := make(chan struct{}, cfg.DialParallel)
	var wg sync.WaitGroup
	connStart := time.Now()
	for i := range clients {
		var topics []string
		switch {
		case !cfg.Idle:
			topics = clientTopics(cfg.TopicPrefix, i, cfg.Topics, cfg.PerClient)
		case cfg.IdleTopic != "":
			topics = []string{cfg.IdleTopic}
		}
		c := newClient(i, topics, cfg.ThrottleMS, sh)
		clients[i] = c
		hc := clientsHC[i%len(clientsHC)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cfg.Transport == "sse" {
				c.runSSE(runCtx, dialCtx, sem, base, hc)
			} else {
				c.runWS(runCtx, dialCtx, sem, base, hc)
			}
		}()
	}
	for _, c := range clients {
		select {
		case <-c.ready:
		case <-dialCtx.Done():
		}
	}
	res.ConnectSec = time.Since(connStart).Seconds()
	for _, c := range clients {
		select {
		case <-c.ready:
			if c.readyOK {
				res.Ready++
			}
		default:
		}
	}
	logf("%d/%d clients subscribed in %.1fs", res.Ready, cfg.Clients, res.ConnectSec)

	srvStart := readProc(cfg.PID)
	measureStart := time.Now()
	var pubs []*publisher
	if !cfg.Idle {
		pubs = make([]*publisher, cfg.Publishers)
		for p := range pubs {
			pubs[p] = &publisher{url: baseStr, hc: pubHC, every: cfg.BatchEvery, maxBatch: cfg.MaxBatch}
		}
		for i, t := range allTopics {
			pubs[i%len(pubs)].names = append(pubs[i%len(pubs)].names, t)
		}
		window, endWindow := context.WithTimeout(ctx, cfg.Duration)
		var pwg sync.WaitGroup
		for _, p := range pubs {
			if cfg.Rate > 0 {
				p.rate = cfg.Rate * float64(len(p.names)) / float64(cfg.Topics)
			}
			pwg.Add(1)
			go func() { defer pwg.Done(); p.run(window, ctx) }()
		}
		pwg.Wait()
		endWindow()
		pubEnd := time.Now()
		res.PublishSec = pubEnd.Sub(measureStart).Seconds()

		accepted := map[string]int64{}
		for _, p := range pubs {
			for j, t := range p.names {
				accepted[t] += p.accepted[j]
				res.Published += p.accepted[j]
			}
			res.Refused += p.refused
			res.PubFailed += p.failed
			res.PubBehind += p.behind
			if res.FirstError == "" && p.firstErr != "" {
				res.FirstError = "publish: " + p.firstErr
			}
		}
		res.PublishRate = float64(res.Published) / res.PublishSec
		for _, c := range clients {
			select {
			case <-c.ready:
				if c.readyOK {
					for _, t := range c.topics {
						res.Expected += uint64(accepted[t])
					}
				}
			default:
			}
		}
		// Wait for deliveries: at least one throttle interval plus margin,
		// then until every subscribed client has covered every tick or the
		// drain deadline passes.
		minWait := time.Duration(cfg.ThrottleMS)*time.Millisecond + 200*time.Millisecond
		drainEnd := time.Now().Add(cfg.Drain + time.Duration(cfg.ThrottleMS)*time.Millisecond)
		caught := time.Time{}
		for i := 0; i < 100000 && time.Now().Before(drainEnd) && ctx.Err() == nil; i++ {
			if sh.covered.Load() >= res.Expected {
				if caught.IsZero() {
					caught = time.Now()
				}
				if time.Since(pubEnd) >= minWait {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if caught.IsZero() {
			caught = time.Now()
		}
		res.MeasureSec = caught.Sub(measureStart).Seconds()
		res.Delivered = sh.delivered.Load()
		res.Covered = sh.covered.Load()
	} else {
		select {
		case <-time.After(cfg.Duration):
		case <-ctx.Done():
		}
		res.MeasureSec = time.Since(measureStart).Seconds()
	}
	srvEnd := readProc(cfg.PID)
	selfEnd := readProc(os.Getpid())

	// Stop the clients and wait for them (bounded).
	stopClients()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		return nil, errors.New("clients did not stop within 20s")
	}

	// Accounting.
	var hist Histogram
	for _, h := range sh.hists {
		hist.Merge(h)
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	res.P50ms, res.P90ms, res.P99ms, res.MaxMs = ms(hist.Quantile(0.50)), ms(hist.Quantile(0.90)), ms(hist.Quantile(0.99)), ms(hist.Max())
	if res.MeasureSec > 0 {
		res.DeliveredRate = float64(res.Delivered) / res.MeasureSec
		res.CoveredRate = float64(res.Covered) / res.MeasureSec
	}
	expectLast := map[string]uint64{}
	for _, p := range pubs {
		for j, t := range p.names {
			expectLast[t] = uint64(p.accepted[j])
		}
	}
	for _, c := range clients {
		if c.connected {
			res.Connected++
		}
		row := ClientRow{ID: c.id, Updates: c.updates, Lagging: c.lagging}
		if c.err != nil {
			res.ClientErrors++
			row.Err = c.err.Error()
			if res.FirstError == "" {
				res.FirstError = fmt.Sprintf("client %d: %v", c.id, c.err)
			}
		}
		if c.firstErr != "" && res.FirstError == "" {
			res.FirstError = fmt.Sprintf("client %d: %s", c.id, c.firstErr)
		}
		if !cfg.Idle {
			for i := range c.trk {
				t := &c.trk[i]
				row.Covered += t.Covered
				row.Dup += t.Dup
				row.OOO += t.OutOfOrd
				if c.snapped[i] {
					row.Missing += t.Missing(t.Base() + expectLast[c.topics[i]])
				}
			}
		}
		res.Missing += row.Missing
		res.Dup += row.Dup
		res.OutOfOrder += row.OOO
		res.CtrMismatch += c.ctrMismatch
		res.Lagging += c.lagging
		res.ErrMsgs += c.errMsgs
		if row.Missing > 0 {
			res.ClientsLoss++
		}
		if row.Dup > 0 {
			res.ClientsDup++
		}
		if row.OOO > 0 {
			res.ClientsOOO++
		}
		res.MaxMissingCli = max(res.MaxMissingCli, row.Missing)
		res.MaxDupCli = max(res.MaxDupCli, row.Dup)
		res.MaxOOOCli = max(res.MaxOOOCli, row.OOO)
		res.PerClientRows = append(res.PerClientRows, row)
	}
	if srvEnd.ok && srvStart.ok {
		res.ServerMeasured = true
		res.ServerRSS = srvEnd.rssBytes
		if res.Connected > 0 {
			res.RSSPerConn = float64(srvEnd.rssBytes-srvBase.rssBytes) / float64(res.Connected)
		}
		res.ServerCPUSec = srvEnd.cpuSec - srvStart.cpuSec
		if res.Delivered > 0 {
			res.CPUPerMillion = res.ServerCPUSec / (float64(res.Delivered) / 1e6)
		}
		if res.MeasureSec > 0 {
			res.ServerCPUUtil = res.ServerCPUSec / res.MeasureSec
		}
	}
	if selfEnd.ok && selfBase.ok {
		res.GenCPUSec = selfEnd.cpuSec - selfBase.cpuSec
	}
	sort.Slice(res.PerClientRows, func(i, j int) bool { return res.PerClientRows[i].ID < res.PerClientRows[j].ID })
	return res, nil
}
