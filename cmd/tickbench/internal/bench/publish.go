package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// publisher posts ticks for the topics it owns, in order: one publisher
// per topic, one request at a time, so a topic's seq order is its ctr
// order.
type publisher struct {
	url      string
	hc       *http.Client
	names    []string // the topics it owns
	ctr      []int64  // last ctr sent, per owned topic
	accepted []int64  // ticks accepted, per owned topic
	rate     float64  // ticks/s; 0 = as fast as the server answers
	every    time.Duration
	maxBatch int

	posts, refused, failed int64
	firstErr               string
	behind                 int64 // ticks the schedule wanted but a capped batch did not send
	body                   bytes.Buffer
	lineTopic              []int
}

// prime publishes one tick per topic so that every topic exists (and
// gives a snapshot) before clients subscribe.
func prime(ctx context.Context, hc *http.Client, base string, topics []string) error {
	var b bytes.Buffer
	now := time.Now()
	for _, t := range topics {
		fmt.Fprintf(&b, `{"topic":%q,"ts":%d,"price":100,"size":0,"fields":{"ctr":0,"sent_us":%d}}`+"\n", t, now.UnixMilli(), now.UnixMicro())
	}
	res, err := post(ctx, hc, base, b.Bytes())
	if err != nil {
		return fmt.Errorf("priming topics: %w", err)
	}
	if len(res.Refused) > 0 {
		return fmt.Errorf("priming topics: %d refused, first: %s", len(res.Refused), res.Refused[0].Error)
	}
	return nil
}

type publishAnswer struct {
	Accepted int `json:"accepted"`
	Refused  []struct {
		Line  int    `json:"line"`
		Error string `json:"error"`
	} `json:"refused"`
}

func post(ctx context.Context, hc *http.Client, base string, body []byte) (publishAnswer, error) {
	var res publishAnswer
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/publish", bytes.NewReader(body))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := hc.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return res, fmt.Errorf("status %s, body %.200q: %w", resp.Status, raw, err)
	}
	return res, nil
}

// run publishes until window ends. Requests already sent finish under
// reqCtx, so that every tick is either known accepted or counted failed.
func (p *publisher) run(window, reqCtx context.Context) {
	p.ctr = make([]int64, len(p.names))
	p.accepted = make([]int64, len(p.names))
	start := time.Now()
	var sent int64
	rr := 0
	if p.rate <= 0 {
		for window.Err() == nil {
			p.send(reqCtx, p.maxBatch, &rr)
		}
		return
	}
	tk := time.NewTicker(p.every)
	defer tk.Stop()
	for {
		select {
		case <-window.Done():
			return
		case <-tk.C:
		}
		due := int64(time.Since(start).Seconds()*p.rate) - sent
		if due <= 0 {
			continue
		}
		k := due
		if k > int64(p.maxBatch) {
			p.behind += k - int64(p.maxBatch)
			k = int64(p.maxBatch)
		}
		p.send(reqCtx, int(k), &rr)
		sent += due // a capped batch does not carry over: the schedule stays on time
	}
}

func (p *publisher) send(ctx context.Context, k int, rr *int) {
	p.body.Reset()
	p.lineTopic = p.lineTopic[:0]
	now := time.Now()
	ms, us := now.UnixMilli(), now.UnixMicro()
	b := p.body.AvailableBuffer()
	for j := 0; j < k; j++ {
		t := *rr % len(p.names)
		*rr++
		p.ctr[t]++
		c := p.ctr[t]
		b = append(b, `{"topic":"`...)
		b = append(b, p.names[t]...)
		b = append(b, `","ts":`...)
		b = strconv.AppendInt(b, ms, 10)
		b = append(b, `,"price":`...)
		b = strconv.AppendFloat(b, 100+float64(c%1000)/100, 'f', -1, 64)
		b = append(b, `,"size":1,"fields":{"ctr":`...)
		b = strconv.AppendInt(b, c, 10)
		b = append(b, `,"sent_us":`...)
		b = strconv.AppendInt(b, us, 10)
		b = append(b, "}}\n"...)
		p.lineTopic = append(p.lineTopic, t)
	}
	p.body.Write(b)
	p.posts++
	res, err := post(ctx, p.hc, p.url, p.body.Bytes())
	if err != nil {
		p.failed += int64(k)
		if p.firstErr == "" {
			p.firstErr = err.Error()
		}
		return
	}
	refused := make(map[int]bool, len(res.Refused))
	for _, r := range res.Refused {
		refused[r.Line] = true
		if p.firstErr == "" {
			p.firstErr = "refused: " + r.Error
		}
	}
	p.refused += int64(len(res.Refused))
	for i, t := range p.lineTopic {
		if !refused[i+1] {
			p.accepted[t]++
		}
	}
}
