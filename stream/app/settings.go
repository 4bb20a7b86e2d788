package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream/auth"
)

// Settings are the tickstream command's settings. Each comes, in order of
// precedence, from a flag (--history-depth), an environment variable
// (TICKSTREAM_HISTORY_DEPTH) or the config file (history_depth:), else its
// default. The help tag is the flag's help text; min and max bound numbers.
type Settings struct {
	Addr              string  `yaml:"addr" help:"listen address" default:":8080"`
	LogLevel          string  `yaml:"log_level" help:"log level: debug, info, warn or error" default:"info"`
	LogFormat         string  `yaml:"log_format" help:"log format: text or json" default:"text"`
	HistoryDepth      int     `yaml:"history_depth" help:"raw ticks kept per topic for resume and /api/history" default:"1000" min:"0" max:"10000000"`
	CandleDepth       int     `yaml:"candle_depth" help:"bars kept per topic and candle interval" default:"500" min:"0" max:"1000000"`
	MaxTopics         int     `yaml:"max_topics" help:"most topics the server keeps" default:"100000" min:"1" max:"100000000"`
	DefaultThrottleMS int     `yaml:"default_throttle_ms" help:"throttle of a subscription that names none" default:"100" min:"0" max:"60000"`
	HeartbeatMS       int     `yaml:"heartbeat_ms" help:"interval of WebSocket pings and SSE heartbeats" default:"15000" min:"100" max:"3600000"`
	MaxPendingBytes   int     `yaml:"max_pending_bytes" help:"outbound queue per client past which it is stepped down" default:"1048576" min:"1024" max:"1073741824"`
	LagThrottleMS     int     `yaml:"lag_throttle_ms" help:"effective throttle of a stepped-down client" default:"2000" min:"10" max:"60000"`
	WriteTimeoutMS    int     `yaml:"write_timeout_ms" help:"write deadline; a client stuck past it is closed with 1013" default:"10000" min:"100" max:"600000"`
	MaxTopicsPerConn  int     `yaml:"max_topics_per_conn" help:"topics held per connection (a pattern counts one plus each topic it delivers)" default:"1000" min:"1" max:"1000000"`
	MaxFrameBytes     int     `yaml:"max_frame_bytes" help:"largest client message" default:"65536" min:"256" max:"1048576"`
	RetryMS           int     `yaml:"retry_ms" help:"base of the jittered reconnect hint in close frames and SSE retry:" default:"1000" min:"100" max:"600000"`
	AcceptRate        float64 `yaml:"accept_rate" help:"new /ws and /sse connections per second (token bucket)" default:"200" min:"1" max:"1000000"`
	AcceptBurst       int     `yaml:"accept_burst" help:"token bucket size for new connections" default:"500" min:"1" max:"1000000"`
	SendBufferBytes   int     `yaml:"send_buffer_bytes" help:"kernel send buffer (SO_SNDBUF) per connection, so a slow client's backlog stays where it is bounded; 0 = the system's autotuning" default:"262144" min:"0" max:"67108864"`
	DisableWebSocket  bool    `yaml:"disable_websocket" help:"refuse /ws upgrades, as a proxy that blocks WebSocket would (clients fall back to SSE)" default:"false"`
	MaxFutureSkewMS   int     `yaml:"max_future_skew_ms" help:"how far a tick's ts may be ahead of the server's clock; -1 = no limit" default:"5000" min:"-1" max:"31536000000"`
	MaxTickAgeMS      int     `yaml:"max_tick_age_ms" help:"how far a tick's ts may be behind the server's clock; -1 = no limit" default:"86400000" min:"-1" max:"3153600000000"`
	TSPolicy          string  `yaml:"ts_policy" help:"a tick whose ts is past those limits: refuse (with a reason) or stamp (ts = accept time)" default:"refuse"`
	ShutdownTimeoutMS int     `yaml:"shutdown_timeout_ms" help:"how long graceful shutdown may take; a second signal exits at once" default:"5000" min:"100" max:"600000"`
	DataDir           string  `yaml:"data_dir" help:"directory of the embedded store keeping history, candles, seqs and the epoch across restarts; empty = memory only" default:"data"`
	RetentionTicks    int     `yaml:"retention_ticks" help:"ticks the store keeps per topic (0 = no bound by count); memory keeps history_depth" default:"100000" min:"0" max:"1000000000"`
	RetentionAge      string  `yaml:"retention_age" help:"how long the store keeps a tick after it was accepted, e.g. 24h (0 = no bound by age)" default:"24h"`
	StoreMaxBytes     int     `yaml:"store_max_bytes" help:"bytes of store pages in use past which the oldest ticks are pruned (0 = no bound)" default:"1073741824" min:"0" max:"1099511627776"`
	Sync              string  `yaml:"sync" help:"store sync policy: an interval (100ms: commit and fsync that often; a crash loses at most the ticks of the last interval) or always (a publish returns after its tick is on disk)" default:"100ms"`
	NATS              string  `yaml:"nats" help:"NATS URL(s), e.g. nats://127.0.0.1:4222: this node joins the cluster of every node on that NATS (JetStream), sharing seqs, history and feeds; empty = a single node" default:""`
	NATSLeaseMS       int     `yaml:"nats_lease_ms" help:"with nats: how long a feed lease lives without renewal; a feed moves to a live node within about this long after its node dies" default:"5000" min:"300" max:"600000"`
	PprofAddr         string  `yaml:"pprof_addr" help:"loopback address (e.g. 127.0.0.1:6060) serving net/http/pprof for profiling; empty = off" default:""`

	// Auth: JWTs on /ws, /sse and the API (see the README's Auth section).
	Auth                string `yaml:"auth" help:"off or on: on needs a valid JWT on /ws, /sse and the API, and one of the keys below" default:"off"`
	AuthHS256Secret     string `yaml:"auth_hs256_secret" help:"HS256 secret (at least 32 bytes); prefer auth_hs256_secret_file" default:""`
	AuthHS256SecretFile string `yaml:"auth_hs256_secret_file" help:"file holding the HS256 secret, reloaded when it changes" default:""`
	AuthPublicKeyFile   string `yaml:"auth_public_key_file" help:"PEM file of RSA (RS256) and P-256 (ES256) public keys, reloaded when it changes" default:""`
	AuthJWKSFile        string `yaml:"auth_jwks_file" help:"JWKS file of RSA and P-256 public keys (a token's kid picks one), reloaded when it changes" default:""`
	AuthReloadMS        int    `yaml:"auth_reload_ms" help:"how often at most the key files are checked for changes" default:"10000" min:"100" max:"3600000"`

	PublishFrom           string  `yaml:"publish_from" help:"who may POST /api/publish while auth is off: loopback, any, or CIDR prefixes (comma-separated)" default:"loopback"`
	MaxTopicsPerPublisher int     `yaml:"max_topics_per_publisher" help:"topics one feed, or one address publishing over HTTP, may create" default:"10000" min:"1" max:"100000000"`
	TopicIdleEvictMS      int     `yaml:"topic_idle_evict_ms" help:"a topic with no tick and no subscriber for this long is evicted; 0 = never" default:"86400000" min:"0" max:"3153600000"`
	AllowedOrigins        string  `yaml:"allowed_origins" help:"browser origins allowed on /ws, /sse and /api (CORS), comma-separated, besides the server's own host: origins, localhost, or * for any" default:"localhost"`
	MaxConnsPerIP         int     `yaml:"max_conns_per_ip" help:"open /ws and /sse streams per client address" default:"256" min:"1" max:"10000000"`
	MaxConns              int     `yaml:"max_conns" help:"open /ws and /sse streams in all" default:"20000" min:"1" max:"10000000"`
	AcceptRatePerIP       float64 `yaml:"accept_rate_per_ip" help:"new /ws and /sse connections per second per client address (token bucket)" default:"20" min:"0.01" max:"1000000"`
	AcceptBurstPerIP      int     `yaml:"accept_burst_per_ip" help:"per-address token bucket size" default:"100" min:"1" max:"1000000"`
	MaxMsgsPerSec         float64 `yaml:"max_msgs_per_sec" help:"client messages (and pings) per second per connection, publish ops aside; past it rate_limited, then 1008" default:"50" min:"0.1" max:"1000000"`
	MaxPublishPerSec      float64 `yaml:"max_publish_per_sec" help:"publish ops per second per WebSocket connection; past it the server reads that connection's next publish later (back-pressure, nothing dropped)" default:"1000" min:"0.1" max:"1000000"`
	ReadTimeoutMS         int     `yaml:"read_timeout_ms" help:"time to read a request's headers and body (slowloris)" default:"10000" min:"100" max:"600000"`
	TLSCert               string  `yaml:"tls_cert" help:"PEM certificate (chain) file: serve HTTPS and WSS; re-read when it changes" default:""`
	TLSKey                string  `yaml:"tls_key" help:"PEM private key file for tls_cert" default:""`

	// Feeds come from the config file only. None means one sim feed.
	Feeds []feeds.Config `yaml:"feeds" flag:"-"`
}

// SettingError names the setting that is wrong.
type SettingError struct {
	Setting string // the config-file key, e.g. "heartbeat_ms"
	Source  string // "flag --heartbeat-ms", "env TICKSTREAM_HEARTBEAT_MS", "config file x.yaml"
	Err     error
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("setting %s (%s): %v", e.Setting, e.Source, e.Err)
}

func (e *SettingError) Unwrap() error { return e.Err }

type settingField struct {
	key, flag, env, help, def string
	min, max                  string
	index                     int
}

func settingFields() []settingField {
	var out []settingField
	t := reflect.TypeFor[Settings]()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("flag") == "-" {
			continue
		}
		key := f.Tag.Get("yaml")
		out = append(out, settingField{
			key:   key,
			flag:  strings.ReplaceAll(key, "_", "-"),
			env:   "TICKSTREAM_" + strings.ToUpper(key),
			help:  f.Tag.Get("help"),
			def:   f.Tag.Get("default"),
			min:   f.Tag.Get("min"),
			max:   f.Tag.Get("max"),
			index: i,
		})
	}
	return out
}

// set parses text into the field and checks its range.
func (sf settingField) set(s *Settings, text string) error {
	v := reflect.ValueOf(s).Elem().Field(sf.index)
	switch v.Kind() {
	case reflect.String:
		v.SetString(text)
	case reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return fmt.Errorf("%q is not true or false", text)
		}
		v.SetBool(b)
	case reflect.Int:
		n, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", text)
		}
		v.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", text)
		}
		v.SetFloat(n)
	}
	return sf.check(v)
}

func (sf settingField) check(v reflect.Value) error {
	if sf.min == "" {
		return nil
	}
	lo, _ := strconv.ParseFloat(sf.min, 64)
	hi, _ := strconv.ParseFloat(sf.max, 64)
	var n float64
	switch v.Kind() {
	case reflect.Int:
		n = float64(v.Int())
	case reflect.Float64:
		n = v.Float()
	}
	if n < lo || n > hi {
		return fmt.Errorf("%v is out of range: want %s to %s", n, sf.min, sf.max)
	}
	return nil
}

// ErrHelp is returned by LoadSettings when -h or --help was asked for; the
// usage has been written.
var ErrHelp = flag.ErrHelp

// LoadSettings reads settings from args (flags), getenv and the config
// file named by --config or TICKSTREAM_CONFIG. Usage text goes to usage.
func LoadSettings(args []string, getenv func(string) string, usage io.Writer) (Settings, error) {
	var s Settings
	fields := settingFields()
	for _, f := range fields {
		if err := f.set(&s, f.def); err != nil {
			panic("server: bad default for " + f.key) // a programming error
		}
	}

	fs := flag.NewFlagSet("tickstream", flag.ContinueOnError)
	fs.SetOutput(usage)
	configPath := fs.String("config", "", "config file (YAML): settings by their snake_case names, and feeds:  [env TICKSTREAM_CONFIG]")
	flagText := make(map[string]*string, len(fields))
	for _, f := range fields {
		flagText[f.key] = fs.String(f.flag, "", fmt.Sprintf("%s (default %q)  [env %s]", f.help, f.def, f.env))
	}
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: tickstream [flags]\n       tickstream record --topics A,B --out file.ndjson [--url ws://localhost:8080/ws]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return s, ErrHelp
		}
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}

	// The config file, then env, then flags: each overrides the last.
	path := *configPath
	if path == "" {
		path = getenv("TICKSTREAM_CONFIG")
	}
	if path != "" {
		if err := loadFile(&s, path, fields); err != nil {
			return s, err
		}
	}
	for _, f := range fields {
		if v := getenv(f.env); v != "" {
			if err := f.set(&s, v); err != nil {
				return s, &SettingError{Setting: f.key, Source: "env " + f.env, Err: err}
			}
		}
	}
	set := make(map[string]bool)
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for _, f := range fields {
		if set[f.flag] {
			if err := f.set(&s, *flagText[f.key]); err != nil {
				return s, &SettingError{Setting: f.key, Source: "flag --" + f.flag, Err: err}
			}
		}
	}
	return s, s.validate()
}

func loadFile(s *Settings, path string, fields []settingField) error {
	src := "config file " + path
	data, err := os.ReadFile(path)
	if err != nil {
		return &SettingError{Setting: "config", Source: src, Err: err}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil && !errors.Is(err, io.EOF) {
		return fileError(src, data, err)
	}
	v := reflect.ValueOf(s).Elem()
	for _, f := range fields {
		if err := f.check(v.Field(f.index)); err != nil {
			return &SettingError{Setting: f.key, Source: src, Err: err}
		}
	}
	for i, fc := range s.Feeds {
		if fc.Type == "" {
			return &SettingError{Setting: fmt.Sprintf("feeds[%d].type", i), Source: src, Err: errors.New("missing; want one of " + strings.Join(feeds.DefaultRegistry.Types(), ", "))}
		}
	}
	return nil
}

func (s *Settings) validate() error {
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return &SettingError{Setting: "log_level", Source: "value " + strconv.Quote(s.LogLevel), Err: errors.New("want debug, info, warn or error")}
	}
	switch s.TSPolicy {
	case "refuse", "stamp":
	default:
		return &SettingError{Setting: "ts_policy", Source: "value " + strconv.Quote(s.TSPolicy), Err: errors.New("want refuse or stamp")}
	}
	switch s.LogFormat {
	case "text", "json":
	default:
		return &SettingError{Setting: "log_format", Source: "value " + strconv.Quote(s.LogFormat), Err: errors.New("want text or json")}
	}
	if _, err := s.retentionAge(); err != nil {
		return &SettingError{Setting: "retention_age", Source: "value " + strconv.Quote(s.RetentionAge), Err: err}
	}
	if _, _, err := s.syncPolicy(); err != nil {
		return &SettingError{Setting: "sync", Source: "value " + strconv.Quote(s.Sync), Err: err}
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return &SettingError{Setting: "tls_cert", Source: "tls_cert and tls_key", Err: errors.New("set both or neither")}
	}
	if err := checkLoopback(s.PprofAddr); err != nil {
		return &SettingError{Setting: "pprof_addr", Source: "value " + strconv.Quote(s.PprofAddr), Err: err}
	}
	if s.Addr == "" {
		return &SettingError{Setting: "addr", Source: "value \"\"", Err: errors.New("want host:port, e.g. :8080")}
	}
	switch s.Auth {
	case "off", "on":
	default:
		return &SettingError{Setting: "auth", Source: "value " + strconv.Quote(s.Auth), Err: errors.New("want off or on")}
	}
	if s.Auth == "on" && s.AuthHS256Secret == "" && s.AuthHS256SecretFile == "" && s.AuthPublicKeyFile == "" && s.AuthJWKSFile == "" {
		return &SettingError{Setting: "auth", Source: "value \"on\"", Err: errors.New("auth on needs a key: set auth_hs256_secret_file, auth_hs256_secret, auth_public_key_file or auth_jwks_file")}
	}
	if s.AuthHS256Secret != "" && len(s.AuthHS256Secret) < auth.MinSecretBytes {
		return &SettingError{Setting: "auth_hs256_secret", Source: "value (not shown)", Err: fmt.Errorf("%d bytes: want at least %d", len(s.AuthHS256Secret), auth.MinSecretBytes)}
	}
	return nil
}

// retentionAge parses retention_age: a duration, 0 meaning no bound.
func (s *Settings) retentionAge() (time.Duration, error) {
	if s.RetentionAge == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s.RetentionAge)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration such as 24h or 30m, or 0 for no bound")
	}
	return d, nil
}

// syncPolicy parses sync: "always", or an interval of 1ms to 1m.
func (s *Settings) syncPolicy() (always bool, every time.Duration, err error) {
	if s.Sync == "always" {
		return true, 0, nil
	}
	d, err := time.ParseDuration(s.Sync)
	if err != nil || d < time.Millisecond || d > time.Minute {
		return false, 0, errors.New("want always, or an interval from 1ms to 1m such as 100ms")
	}
	return false, d, nil
}

var unknownKey = regexp.MustCompile(`^line (\d+): field (\S+) not found`)

// fileError turns a YAML error into one line naming the setting.
func fileError(src string, data []byte, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		first := te.Errors[0]
		if m := unknownKey.FindStringSubmatch(first); m != nil {
			return &SettingError{Setting: m[2], Source: src + " line " + m[1], Err: errors.New("unknown setting (see --help for the list)")}
		}
		if m := errLine.FindStringSubmatch(first); m != nil {
			if key := keyAtLine(data, m[1]); key != "" {
				return &SettingError{Setting: key, Source: src + " line " + m[1], Err: errors.New(strings.TrimPrefix(first, m[0]))}
			}
		}
		return &SettingError{Setting: "config", Source: src, Err: errors.New(strings.Join(te.Errors, "; "))}
	}
	return &SettingError{Setting: "config", Source: src, Err: errors.New(strings.ReplaceAll(err.Error(), "\n", " "))}
}

var errLine = regexp.MustCompile(`^line (\d+): `)

// keyAtLine is the top-level key whose entry holds line of the YAML data,
// so that a type error ("line 3: cannot unmarshal …") names its setting.
func keyAtLine(data []byte, line string) string {
	n, _ := strconv.Atoi(line)
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return ""
	}
	key := ""
	for kv := doc.Content[0].Content; len(kv) >= 2 && kv[0].Line <= n; kv = kv[2:] {
		key = kv[0].Value
	}
	return key
}

// checkLoopback accepts "" (off) or host:port whose host is a loopback IP
// or localhost: the profiler shows the process's internals, so it never
// listens beyond the machine.
func checkLoopback(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port on loopback, e.g. 127.0.0.1:6060")
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New("the profiler listens on loopback only: want 127.0.0.1:PORT, [::1]:PORT or localhost:PORT")
	}
	return nil
}
