package replay

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
)

func init() { feeds.Register("replay", New) }

// Options are the replay feed's settings. See README.md for a table.
type Options struct {
	// File is the CSV or NDJSON file to replay, optionally gzipped
	// (detected from its content). A relative path is relative to the
	// process working directory. Required.
	File string `yaml:"file"`
	// Format is "csv" or "ndjson". Zero value means from the file name:
	// .csv is CSV, .ndjson, .jsonl and .json are NDJSON (a trailing .gz
	// is ignored).
	Format string `yaml:"format"`
	// Topic is a fixed topic for every row. Zero value means the topic
	// comes from TopicColumn.
	Topic string `yaml:"topic"`
	// TopicColumn is the column (CSV) or key (NDJSON) holding the topic.
	// Zero value means the first of topic, symbol, product_id, s that the
	// file has.
	TopicColumn string `yaml:"topic_column"`
	// TSColumn is the column or key holding the source time. Zero value
	// means the first of ts, timestamp, time, ts_utc, trade_time_ms, T
	// that the file has.
	TSColumn string `yaml:"ts_column"`
	// TSUnit is the unit of TSColumn: s, ms, us, ns (numbers, fractions
	// allowed) or rfc3339. Zero value means auto: RFC 3339 for text, and
	// for numbers the unit that puts the value between 1973 and 2286.
	TSUnit string `yaml:"ts_unit"`
	// Fields maps tick field names to columns or keys, e.g.
	// {price: price, size: qty}. Zero value means, for CSV, every column
	// named like a market field (price, size, bid, ask, bid_size,
	// ask_size, volume), and for NDJSON, the tick format itself
	// (feeds.ParseTick), which is what `tickstream record` writes.
	Fields map[string]string `yaml:"fields"`
	// Rename maps source topics to published topics, e.g.
	// {BTCUSDT: BTC-USD}. Zero value means topics are kept.
	Rename map[string]string `yaml:"rename"`
	// Speed is the replay speed: 1 is real time, 10 is ten times faster.
	// Zero value, or "max", means as fast as possible.
	Speed Speed `yaml:"speed"`
	// Loop restarts the file at its end, shifting timestamps forward by
	// the file's span plus one mean tick interval each time, so that time
	// keeps increasing. Zero value means play once and finish.
	Loop bool `yaml:"loop"`
	// Loops bounds the number of passes when Loop is set. Zero value
	// means no bound.
	Loops int `yaml:"loops"`
	// Rebase shifts every timestamp by a whole number of hours
	// (RebaseUnit) so that the file plays as if it were recorded within
	// the last hour or two, keeping every candle's shape. Replay feeds of
	// one config whose data start within an hour of each other (trades
	// and quotes of one session) get exactly the same offset; see
	// rebaseGroup and README.md. Zero value means source timestamps are
	// kept (shifted by looping only).
	Rebase bool `yaml:"rebase"`
	// AbsentValues maps tick fields to a value that means "not given"
	// in the file, e.g. {bid: 0, ask: 0} for quote files where each row
	// carries one side and writes 0 for the other. A field with that
	// value is left out of the tick (a row left with no field at all is
	// skipped). Zero value means every value is a real one.
	AbsentValues map[string]float64 `yaml:"absent_values"`
}

// Speed is a replay speed factor; 0 means as fast as possible.
type Speed float64

// UnmarshalYAML accepts a number or "max".
func (s *Speed) UnmarshalYAML(n *yaml.Node) error {
	if strings.EqualFold(n.Value, "max") {
		*s = 0
		return nil
	}
	f, err := strconv.ParseFloat(n.Value, 64)
	if err != nil {
		return fmt.Errorf("speed %q: want a number or \"max\"", n.Value)
	}
	*s = Speed(f)
	return nil
}

var (
	topicCandidates = []string{"topic", "symbol", "product_id", "s"}
	tsCandidates    = []string{"ts", "timestamp", "time", "ts_utc", "trade_time_ms", "T"}
)

// Source replays a file.
type Source struct {
	name string
	opts Options
	csv  bool
	dec  *decoder // nil for NDJSON in the tick format
	log  *slog.Logger
	now  func() time.Time

	firstTS int64        // the file's first timestamp, with Rebase
	rebase  *rebaseGroup // with Rebase
}

var _ feeds.Source = (*Source)(nil)

// New builds a replay source from its config.
var New = feeds.FactoryFor(NewSource)

// NewSource checks the options and the file: it must exist, and a CSV
// header must have the mapped columns. It reads only the header.
func NewSource(name string, o Options) (*Source, error) {
	bad := func(opt, format string, args ...any) error { return feeds.BadOption(name, opt, format, args...) }
	if o.File == "" {
		return nil, bad("file", "missing; give a CSV or NDJSON file")
	}
	if o.Format == "" {
		base := strings.TrimSuffix(strings.ToLower(o.File), ".gz")
		switch filepath.Ext(base) {
		case ".csv":
			o.Format = "csv"
		case ".ndjson", ".jsonl", ".json":
			o.Format = "ndjson"
		default:
			return nil, bad("format", "cannot tell from file name %q; set csv or ndjson", o.File)
		}
	}
	switch {
	case o.Format != "csv" && o.Format != "ndjson":
		return nil, bad("format", "%q: want csv or ndjson", o.Format)
	case o.Speed < 0 || math.IsInf(float64(o.Speed), 0) || math.IsNaN(float64(o.Speed)):
		return nil, bad("speed", "%v: want 0 (max) or more", float64(o.Speed))
	case o.Loops < 0:
		return nil, bad("loops", "%d is negative", o.Loops)
	case o.Loops > 0 && !o.Loop:
		return nil, bad("loops", "set, but loop is false")
	case o.Topic != "" && !feeds.ValidTopic(o.Topic):
		return nil, bad("topic", "%q is not a valid topic", o.Topic)
	}
	if _, err := parseUnit(o.TSUnit); err != nil {
		return nil, bad("ts_unit", "%v", err)
	}
	for from, to := range o.Rename {
		if !feeds.ValidTopic(to) {
			return nil, bad("rename", "%s: %q is not a valid topic", from, to)
		}
	}
	for field, v := range o.AbsentValues {
		if !feeds.ValidFieldName(field) {
			return nil, bad("absent_values", "%q is not a valid field name", field)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, bad("absent_values", "%s: %v is not a finite number", field, v)
		}
	}
	for field, col := range o.Fields {
		if !feeds.ValidFieldName(field) {
			return nil, bad("fields", "%q is not a valid field name", field)
		}
		if col == "" {
			return nil, bad("fields", "%s: empty column name", field)
		}
	}
	if o.Format == "ndjson" && len(o.Fields) == 0 && (o.TopicColumn != "" || o.TSColumn != "" || o.TSUnit != "") {
		return nil, bad("fields", "topic_column, ts_column and ts_unit need a fields mapping for NDJSON; without one, lines are in the tick format")
	}
	s := &Source{name: name, opts: o, csv: o.Format == "csv", log: slog.Default().With("feed", name), now: time.Now}
	f, r, err := openFile(o.File)
	if err != nil {
		return nil, bad("file", "%v", err)
	}
	defer f.Close()
	switch {
	case s.csv:
		header, err := csv.NewReader(r).Read()
		if err != nil {
			return nil, bad("file", "%s: reading CSV header: %v", o.File, err)
		}
		s.dec, err = newDecoder(o, header, true)
		if err != nil {
			return nil, fmt.Errorf("feed %q: %w", name, err)
		}
	case len(o.Fields) > 0:
		// NDJSON with a mapping: the keys are known up front.
		o.TopicColumn = cmp.Or(o.TopicColumn, "topic")
		o.TSColumn = cmp.Or(o.TSColumn, "ts")
		keys := []string{o.TSColumn}
		if o.Topic == "" {
			keys = append(keys, o.TopicColumn)
		}
		for _, col := range o.Fields {
			if !slices.Contains(keys, col) {
				keys = append(keys, col)
			}
		}
		s.dec, err = newDecoder(o, keys, false)
		if err != nil {
			return nil, fmt.Errorf("feed %q: %w", name, err)
		}
	}
	if o.Rebase {
		if s.firstTS, err = s.probeFirstTS(); err != nil {
			return nil, bad("file", "%v", err)
		}
		s.rebase = joinRebaseGroup(s)
	}
	return s, nil
}

// Name is the feed's name.
func (s *Source) Name() string { return s.name }

// openFile opens path and, if it starts with the gzip magic, gunzips it.
func openFile(path string) (io.Closer, io.Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	magic, _ := br.Peek(2)
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		return multiCloser{zr, f}, zr, nil
	}
	return f, br, nil
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// maxLoggedRows bounds the warnings about bad rows per pass; the rest are
// counted.
const maxLoggedRows = 5

// Run replays the file, pacing ticks by their timestamps divided by the
// speed, until the end of the file (nil), the end of the last loop (nil),
// ctx ends (nil) or the bus is closed (nil). Rows that cannot be decoded
// and ticks the bus refuses are skipped (and counted as dropped by the
// supervisor's sink); they never stop or restart the replay.
func (s *Source) Run(ctx context.Context, out feeds.Sink) error {
	var (
		shift     int64 // ms added to every timestamp of this pass
		startWall = s.now()
		startTS   int64 // first paced timestamp, shifted
		paced     bool
	)
	if s.rebase != nil {
		shift = s.rebase.offset(s, startWall)
	}
	for pass := 1; ; pass++ {
		st := passStats{}
		err := s.pass(ctx, out, func(t *feeds.Tick) error {
			st.observe(t.TS)
			if t.TS != 0 {
				t.TS += shift
			}
			if s.opts.Speed > 0 && t.TS != 0 {
				if !paced {
					paced, startTS = true, t.TS
				}
				due := startWall.Add(time.Duration(float64(t.TS-startTS) * float64(time.Millisecond) / float64(s.opts.Speed)))
				if d := due.Sub(s.now()); d > time.Millisecond {
					tm := time.NewTimer(d)
					select {
					case <-ctx.Done():
						tm.Stop()
						return ctx.Err()
					case <-tm.C:
					}
				}
			}
			return feeds.Deliver(out, *t)
		})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return feeds.Stopped(err)
		}
		if st.n == 0 {
			// Also stops a loop over a file with nothing to replay.
			s.log.Warn("replay: no ticks in file", "file", s.opts.File)
			return nil
		}
		if !s.opts.Loop || (s.opts.Loops > 0 && pass >= s.opts.Loops) {
			return nil
		}
		if st.stamped == 0 {
			// Nothing to pace by or shift: looping would spin.
			s.log.Warn("replay: not looping a file without timestamps", "file", s.opts.File)
			return nil
		}
		shift += st.span()
	}
}

// passStats tracks a pass's time span for the loop shift.
type passStats struct {
	n           int
	first, last int64
	stamped     int
}

func (p *passStats) observe(ts int64) {
	p.n++
	if ts == 0 {
		return
	}
	if p.stamped == 0 {
		p.first = ts
	}
	p.last = max(p.last, ts)
	p.stamped++
}

// span is how far the next pass is shifted: the file's span plus one mean
// interval, so that the next pass's first tick comes after this pass's
// last one with a typical gap.
func (p *passStats) span() int64 {
	if p.stamped == 0 {
		return 0
	}
	d := p.last - p.first
	gap := int64(1)
	if p.stamped > 1 {
		gap = max(1, d/int64(p.stamped-1))
	}
	return d + gap
}

// pass reads the file once, calling emit for every decoded tick. Rows
// that cannot be decoded are reported to out (if not nil) as dropped.
func (s *Source) pass(ctx context.Context, out feeds.Sink, emit func(*feeds.Tick) error) error {
	f, r, err := openFile(s.opts.File)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	defer f.Close()
	bad := 0
	skip := func(line int, err error) {
		if out == nil {
			return // probing
		}
		feeds.Drop(out, feeds.DropUnmapped, fmt.Errorf("line %d: %w", line, err))
		bad++
		if bad <= maxLoggedRows {
			s.log.Warn("replay: skipping row", "file", s.opts.File, "line", line, "err", err)
		}
	}
	defer func() {
		if bad > maxLoggedRows {
			s.log.Warn("replay: skipped rows", "file", s.opts.File, "count", bad)
		}
	}()
	var t feeds.Tick
	if s.csv {
		cr := csv.NewReader(r)
		cr.ReuseRecord = true
		cr.FieldsPerRecord = -1
		if _, err := cr.Read(); err != nil {
			return fmt.Errorf("replay: %s: header: %w", s.opts.File, err)
		}
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rec, err := cr.Read()
			if err == io.EOF {
				return nil
			}
			line, _ := cr.FieldPos(0)
			if err != nil {
				var pe *csv.ParseError
				if errors.As(err, &pe) && pe.Err != csv.ErrQuote && pe.Err != csv.ErrBareQuote {
					skip(line, err)
					continue
				}
				return fmt.Errorf("replay: %s: %w", s.opts.File, err)
			}
			if err := s.dec.decodeRecord(&t, rec); err != nil {
				skip(line, err)
				continue
			}
			if err := emit(&t); err != nil {
				return err
			}
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if err := s.decodeLine(&t, b); err != nil {
			skip(line, err)
			continue
		}
		if err := emit(&t); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("replay: %s: %w", s.opts.File, err)
	}
	return nil
}

// decodeLine decodes one NDJSON line into t.
func (s *Source) decodeLine(t *feeds.Tick, line []byte) error {
	if s.dec == nil {
		parsed, err := feeds.ParseTick(line)
		if err != nil {
			return err
		}
		if to, ok := s.opts.Rename[parsed.Topic]; ok {
			parsed.Topic = to
		}
		if s.opts.Topic != "" {
			parsed.Topic = s.opts.Topic
		}
		if len(s.opts.AbsentValues) > 0 {
			parsed.Fields = slices.DeleteFunc(parsed.Fields, func(f feeds.Field) bool {
				v, ok := s.opts.AbsentValues[f.Name]
				return ok && f.Value.Float() == v
			})
			if len(parsed.Fields) == 0 {
				return errors.New("no field values")
			}
		}
		*t = parsed
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return err
	}
	rec := make([]string, len(s.dec.columns))
	for i, col := range s.dec.columns {
		v, ok := obj[col]
		if !ok || string(v) == "null" {
			continue
		}
		if len(v) > 0 && v[0] == '"' {
			var str string
			if err := json.Unmarshal(v, &str); err != nil {
				return fmt.Errorf("%s: %w", col, err)
			}
			rec[i] = str
		} else {
			rec[i] = string(v)
		}
	}
	return s.dec.decodeRecord(t, rec)
}

// decoder maps the columns of a record to a tick.
type decoder struct {
	columns  []string // the record's column names (header or keys)
	topic    string   // fixed topic, or ""
	topicCol int      // -1 if fixed
	tsCol    int
	unit     unit
	fields   []fieldCol // in tick field order
	rename   map[string]string
	absent   map[string]float64
}

type fieldCol struct {
	name string
	col  int
}

func newDecoder(o Options, columns []string, isCSV bool) (*decoder, error) {
	columns = slices.Clone(columns)
	if len(columns) > 0 {
		columns[0] = strings.TrimPrefix(columns[0], "\ufeff") // Excel's BOM
	}
	index := func(name string) int { return slices.Index(columns, name) }
	find := func(opt, given string, candidates []string) (int, error) {
		if given != "" {
			if i := index(given); i >= 0 {
				return i, nil
			}
			return -1, fmt.Errorf("options.%s: no column %q in %v", opt, given, columns)
		}
		for _, c := range candidates {
			if i := index(c); i >= 0 {
				return i, nil
			}
		}
		return -1, fmt.Errorf("options.%s: none of %v in %v; name the column", opt, candidates, columns)
	}
	d := &decoder{columns: columns, topic: o.Topic, topicCol: -1, rename: o.Rename, absent: o.AbsentValues}
	d.unit, _ = parseUnit(o.TSUnit)
	var err error
	if o.Topic == "" {
		if d.topicCol, err = find("topic_column", o.TopicColumn, topicCandidates); err != nil {
			return nil, err
		}
	}
	if d.tsCol, err = find("ts_column", o.TSColumn, tsCandidates); err != nil {
		return nil, err
	}
	fields := o.Fields
	if len(fields) == 0 && isCSV {
		fields = make(map[string]string)
		for _, m := range feeds.MarketFields {
			if index(m) >= 0 {
				fields[m] = m
			}
		}
		if len(fields) == 0 {
			return nil, fmt.Errorf("options.fields: no column named like a market field in %v; map some, e.g. {price: last}", columns)
		}
	}
	for name, col := range fields {
		i := index(col)
		if i < 0 {
			return nil, fmt.Errorf("options.fields: %s: no column %q in %v", name, col, columns)
		}
		d.fields = append(d.fields, fieldCol{name, i})
	}
	if len(d.fields) > feeds.MaxFields {
		return nil, fmt.Errorf("options.fields: %d fields, at most %d", len(d.fields), feeds.MaxFields)
	}
	slices.SortFunc(d.fields, func(a, b fieldCol) int { return compareFields(a.name, b.name) })
	return d, nil
}

// compareFields orders market fields first, in their wire order, then
// custom fields by name, as feeds.ParseTick does.
func compareFields(a, b string) int {
	ra, rb := slices.Index(feeds.MarketFields, a), slices.Index(feeds.MarketFields, b)
	if ra < 0 {
		ra = len(feeds.MarketFields)
	}
	if rb < 0 {
		rb = len(feeds.MarketFields)
	}
	if ra != rb {
		return ra - rb
	}
	return strings.Compare(a, b)
}

// decodeRecord fills t from one record, reusing t.Fields. Empty cells are
// skipped; a row with no field at all is an error.
func (d *decoder) decodeRecord(t *feeds.Tick, rec []string) error {
	t.Fields = t.Fields[:0]
	t.Topic = d.topic
	if d.topicCol >= 0 {
		if d.topicCol >= len(rec) {
			return fmt.Errorf("no %s column", d.columns[d.topicCol])
		}
		t.Topic = rec[d.topicCol]
		if to, ok := d.rename[t.Topic]; ok {
			t.Topic = to
		}
	}
	if d.tsCol >= len(rec) {
		return fmt.Errorf("no %s column", d.columns[d.tsCol])
	}
	ts, err := d.unit.parse(rec[d.tsCol])
	if err != nil {
		return fmt.Errorf("%s: %w", d.columns[d.tsCol], err)
	}
	t.TS = ts
	for _, f := range d.fields {
		if f.col >= len(rec) || rec[f.col] == "" {
			continue
		}
		v, err := tick.ParseNum(strings.TrimSpace(rec[f.col])) // exact decimals
		if err != nil {
			return fmt.Errorf("%s: %q is not a number: %w", d.columns[f.col], rec[f.col], err)
		}
		if a, ok := d.absent[f.name]; ok && v.Float() == a {
			continue
		}
		t.Fields = append(t.Fields, feeds.Field{Name: f.name, Value: v})
	}
	if len(t.Fields) == 0 {
		return errors.New("no field values")
	}
	return t.Validate()
}

// unit is a timestamp unit; unitAuto guesses per value.
type unit int

const (
	unitAuto unit = iota
	unitS
	unitMS
	unitUS
	unitNS
	unitRFC3339
)

func parseUnit(s string) (unit, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return unitAuto, nil
	case "s":
		return unitS, nil
	case "ms":
		return unitMS, nil
	case "us", "µs":
		return unitUS, nil
	case "ns":
		return unitNS, nil
	case "rfc3339", "iso8601":
		return unitRFC3339, nil
	}
	return 0, fmt.Errorf("%q: want s, ms, us, ns, rfc3339 or auto", s)
}

// parse converts a timestamp to Unix milliseconds.
func (u unit) parse(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty timestamp")
	}
	v, err := strconv.ParseFloat(s, 64)
	if u == unitRFC3339 || (u == unitAuto && err != nil) {
		return feeds.ParseRFC3339Milli(s)
	}
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a timestamp", s)
	}
	if u == unitAuto {
		// 1e11 s is the year 5138 and 1e11 ms is 1973: anything from 1973
		// to 2286 is unambiguous in exactly one unit.
		switch {
		case v < 1e11:
			u = unitS
		case v < 1e14:
			u = unitMS
		case v < 1e17:
			u = unitUS
		default:
			u = unitNS
		}
	}
	// Exact decimal arithmetic, truncated to the millisecond: a source
	// time is never rounded up into the next millisecond (or bar).
	tu := feeds.Nanoseconds
	switch u {
	case unitS:
		tu = feeds.Seconds
	case unitMS:
		tu = feeds.Milliseconds
	case unitUS:
		tu = feeds.Microseconds
	}
	return feeds.ParseUnixMilli(s, tu)
}
