package tick

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"testing"
)

func TestParseNumKeepsDigits(t *testing.T) {
	for _, s := range []string{"0", "1", "-1", "61837.63", "61837.63000000", "0.01610000", "0.000001", "1500",
		"-0.5", "123456789012345678", "9223372036854775807", "0.000", "1e-7", "1.5e+21", "5e-324"} {
		n, err := ParseNum(s)
		if err != nil {
			t.Fatalf("ParseNum(%q): %v", s, err)
		}
		if got := n.String(); got != s {
			t.Errorf("ParseNum(%q).String() = %q", s, got)
		}
	}
	for s, want := range map[string]string{"+2": "2", "1.": "1", ".5": "0.5", "1E3": "1000", "2.50e2": "250", "-0": "0",
		"1.0000000000000000000000": "1.000000000000000000"} {
		n, err := ParseNum(s)
		if err != nil || n.String() != want {
			t.Errorf("ParseNum(%q) = %v, %v; want %s", s, n, err, want)
		}
	}
}

func TestParseNumRefuses(t *testing.T) {
	for s, want := range map[string]error{
		"NaN": ErrNonFinite, "Infinity": ErrNonFinite, "-Inf": ErrNonFinite, "1e999": ErrNonFinite,
		"12345678901234567891": ErrOutOfRange, "0.12345678901234567891": ErrOutOfRange, "1e-999": ErrOutOfRange,
		"": errNotNumber, "-": errNotNumber, "1.2.3": errNotNumber, "0x10": errNotNumber, "1e": errNotNumber, "1_000": errNotNumber, " 1": errNotNumber,
	} {
		if _, err := ParseNum(s); !errors.Is(err, want) {
			t.Errorf("ParseNum(%q) error %v, want %v", s, err, want)
		}
	}
}

// TestNumOfMatchesAppendFloat: a Go feed's float64 goes out exactly as
// before decimals (encoding/json's formatting).
func TestNumOfMatchesAppendFloat(t *testing.T) {
	vals := []float64{0, 1, -1, 0.1, 61837.63, 1e-6, 9.99e-7, 1e-7, 1.5e-9, 1e20, 1e21, 123456789.123456789,
		-1e300, math.MaxFloat64, math.SmallestNonzeroFloat64, 2.5e-8, 100.25, 1 << 53, -(1 << 62), 1e15, 123456789012345}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		vals = append(vals, rng.NormFloat64()*math.Pow(10, float64(rng.IntN(40)-20)))
	}
	for _, v := range vals {
		n, ok := NumOf(v)
		if !ok {
			t.Fatalf("NumOf(%v) not ok", v)
		}
		if got, want := n.String(), string(AppendFloat(nil, v)); got != want {
			t.Errorf("NumOf(%v) = %s, want %s", v, got, want)
		}
		if n.Float() != v {
			t.Errorf("NumOf(%v).Float() = %v", v, n.Float())
		}
	}
	if _, ok := NumOf(math.NaN()); ok {
		t.Error("NumOf(NaN) ok")
	}
	var tk Tick
	tk.Topic = "a"
	tk.Set("price", math.Inf(1))
	if err := tk.Validate(); !errors.Is(err, ErrNonFinite) {
		t.Errorf("Validate with Set(+Inf): %v", err)
	}
}

// TestNumAddExact: sums are exact and independent of order, as math/big
// computes them.
func TestNumAddExact(t *testing.T) {
	if got := MustNum("0.01610000").Add(MustNum("0.01052000")).String(); got != "0.02662000" {
		t.Errorf("0.01610000 + 0.01052000 = %s", got)
	}
	if got := MustNum("0.0161").Add(MustNum("0.01052")).String(); got != "0.02662" {
		t.Errorf("0.0161 + 0.01052 = %s", got)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		var nums []Num
		want := new(big.Rat)
		for range 1 + rng.IntN(50) {
			s := strconv.FormatInt(rng.Int64N(1e9)-5e8, 10) + "e-" + strconv.Itoa(rng.IntN(9))
			nums = append(nums, MustNum(s))
			r, _ := new(big.Rat).SetString(s)
			want.Add(want, r)
		}
		var a, b Num
		for i := range nums {
			a = a.Add(nums[i])
			b = b.Add(nums[len(nums)-1-i])
		}
		if a != b {
			t.Fatalf("round %d: %s forward, %s backward", round, a, b)
		}
		got, _ := new(big.Rat).SetString(a.String())
		if got.Cmp(want) != 0 {
			t.Fatalf("round %d: sum %s, want %s", round, a, want.FloatString(9))
		}
	}
}

func TestNumCmp(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1", "1.0", 0}, {"0.1", "0.10", 0}, {"1", "2", -1}, {"-1", "-2", 1}, {"1e20", "99999999999999999", 1},
		{"-1e20", "1", -1}, {"0", "0.000", 0}, {"1e-30", "0", 1}, {"9223372036854775807", "1e19", -1}, {"1.5", "1.49999", 1},
	}
	for _, tt := range tests {
		if got := MustNum(tt.a).Cmp(MustNum(tt.b)); got != tt.want {
			t.Errorf("Cmp(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := MustNum(tt.b).Cmp(MustNum(tt.a)); got != -tt.want {
			t.Errorf("Cmp(%s, %s) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestParseTickExactAndTruncatedTS(t *testing.T) {
	tk, err := ParseTick([]byte(`{"topic":"X","ts":"1723161299999.9996","price":"61837.63","size":0.01610000}`))
	if err != nil {
		t.Fatal(err)
	}
	if tk.TS != 1723161299999 {
		t.Errorf("ts %d, want truncated 1723161299999", tk.TS)
	}
	if got := string(tk.AppendJSON(nil)); got != `{"topic":"X","ts":1723161299999,"price":61837.63,"size":0.01610000}` {
		t.Errorf("got %s", got)
	}
	if _, err := ParseTick([]byte(`{"topic":"X","price":12345678901234567891}`)); !errors.Is(err, ErrBadField) {
		t.Errorf("20 digits: %v", err)
	}
}
