package tick

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Num is an exact decimal number: an int64 mantissa times a power of ten.
// A value parsed from text keeps the text's digits (61837.63 stays
// 61837.63, 0.01610000 keeps its eight decimals) and goes out the same
// way; sums (Add) are exact and do not depend on the order of adding. The
// zero value is 0.
//
// Num is two words and needs no allocation to copy, add, compare or
// append as text; that is why tickstream uses it rather than a
// big-number library (see the README's design notes).
type Num struct {
	m int64 // mantissa
	e int16 // decimal exponent: the value is m × 10^e
}

// MaxDigits is the most significant digits a Num always holds (every
// 18-digit integer fits in an int64; 19 digits fit below 9.2e18). A number
// with more is refused (ErrOutOfRange).
const MaxDigits = 18

var errDigits = fmt.Errorf("%w: more than %d significant digits", ErrOutOfRange, MaxDigits)

// maxExp bounds a Num's exponent, a little past float64's range.
const maxExp = 340

// ErrOutOfRange is wrapped by the error for a number a Num cannot hold
// exactly: more than MaxDigits significant digits, or an exponent past
// ±340.
var ErrOutOfRange = errors.New("tick: number out of range")

var errNotNumber = errors.New("not a number")

var pow10 = [...]int64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18}

// NumOf returns the Num of a float64, with strconv's shortest formatting
// (the decimal a Go literal such as 61837.63 denotes). A non-finite v
// gives 0 and false.
func NumOf(v float64) (Num, bool) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return Num{}, false
	}
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return Num{m: int64(v)}, true
	}
	var buf [32]byte
	n, err := parseNum(strconv.AppendFloat(buf[:0], v, 'e', -1, 64))
	return n, err == nil
}

// nonFinite is what Tick.Set stores for NaN or an infinity, so that
// Validate refuses the tick (ErrNonFinite).
var nonFinite = Num{e: math.MinInt16}

// Finite reports whether n is a number (not what Tick.Set stores for NaN
// or an infinity).
func (n Num) Finite() bool { return n.e != math.MinInt16 }

// NumInt returns the Num of an integer.
func NumInt(v int64) Num { return Num{m: v} }

// ParseNum reads a decimal number: an optional sign, digits with an
// optional point, and an optional exponent (JSON numbers, and the decimal
// strings exchanges send). It refuses NaN and infinities (ErrNonFinite)
// and numbers with more than MaxDigits significant digits
// (ErrOutOfRange). Trailing zeros past MaxDigits are dropped.
func ParseNum(s string) (Num, error) { return parseNum([]byte(s)) }

// MustNum is ParseNum that panics on a bad number, for literals in code.
func MustNum(s string) Num {
	n, err := ParseNum(s)
	if err != nil {
		panic(err)
	}
	return n
}

func parseNum(s []byte) (Num, error) {
	i, neg := 0, false
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		neg = s[i] == '-'
		i++
	}
	var m int64
	digits, sig, zeros := 0, 0, 0 // zeros: significant zeros not yet in m
	e := 0
	point := false
	for ; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if point {
				return Num{}, errNotNumber
			}
			point = true
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		digits++
		if point {
			e--
		}
		if c == '0' {
			if sig > 0 {
				zeros++
			}
			continue
		}
		// a non-zero digit: the zeros before it are significant
		for ; zeros > 0; zeros-- {
			if m > math.MaxInt64/10 {
				return Num{}, errDigits
			}
			m *= 10
			sig++
		}
		if m > (math.MaxInt64-int64(c-'0'))/10 {
			return Num{}, errDigits
		}
		m = m*10 + int64(c-'0')
		sig++
	}
	if digits == 0 {
		if isNonFinite(s) {
			return Num{}, ErrNonFinite
		}
		return Num{}, errNotNumber
	}
	// trailing zeros: keep them in m while they fit, else in the exponent
	for ; zeros > 0; zeros-- {
		if m <= math.MaxInt64/10 {
			m *= 10
			sig++
		} else {
			e++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			eneg = s[i] == '-'
			i++
		}
		x, nd := 0, 0
		for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
			if x < 10000 {
				x = x*10 + int(s[i]-'0')
			}
			nd++
		}
		if nd == 0 {
			return Num{}, errNotNumber
		}
		if eneg {
			x = -x
		}
		e += x
	}
	if i != len(s) {
		return Num{}, errNotNumber
	}
	if m == 0 {
		e = max(min(e, 0), -maxExp) // 0.000 keeps its decimals
	}
	if e > maxExp {
		return Num{}, fmt.Errorf("%w: exponent %d past float64's range", ErrNonFinite, e)
	}
	if e < -maxExp {
		return Num{}, fmt.Errorf("%w: exponent %d past -%d", ErrOutOfRange, e, maxExp)
	}
	if neg {
		m = -m
	}
	return Num{m: m, e: int16(e)}, nil
}

func isNonFinite(s []byte) bool {
	switch string(s) {
	case "NaN", "nan", "+NaN", "-NaN", "Inf", "+Inf", "-Inf", "inf", "+inf", "-inf",
		"Infinity", "+Infinity", "-Infinity", "infinity", "-infinity":
		return true
	}
	return false
}

// IsZero reports whether n is 0.
func (n Num) IsZero() bool { return n.m == 0 }

// Sign returns -1, 0 or +1.
func (n Num) Sign() int {
	switch {
	case n.m < 0:
		return -1
	case n.m > 0:
		return 1
	}
	return 0
}

// Float returns the float64 nearest to n.
func (n Num) Float() float64 {
	if n.m == 0 {
		return 0
	}
	if n.e == 0 {
		return float64(n.m)
	}
	// Exact when both the mantissa and 10^|e| are exact float64s.
	if m := n.m; m > -1<<53 && m < 1<<53 && n.e >= -22 && n.e <= 22 {
		if n.e > 0 {
			return float64(m) * float64pow10[n.e]
		}
		return float64(m) / float64pow10[-n.e]
	}
	var buf [48]byte
	f, _ := strconv.ParseFloat(string(n.Append(buf[:0])), 64)
	return f
}

var float64pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// scaled returns m × 10^d (d ≥ 0), or false if it overflows an int64.
func scaled(m int64, d int) (int64, bool) {
	if m == 0 {
		return 0, true
	}
	if d > 18 {
		return 0, false
	}
	p := pow10[d]
	r := m * p
	if r/p != m {
		return 0, false
	}
	return r, true
}

// Cmp compares a and b by value: -1, 0 or +1.
func (a Num) Cmp(b Num) int {
	if a.e == b.e {
		return cmpInt(a.m, b.m)
	}
	if a.Sign() != b.Sign() || a.m == 0 {
		return cmpInt(int64(a.Sign()), int64(b.Sign()))
	}
	// same sign, both non-zero: bring the one with the larger exponent
	// down to the other's; if that overflows it is the larger magnitude.
	if a.e > b.e {
		if am, ok := scaled(a.m, int(a.e-b.e)); ok {
			return cmpInt(am, b.m)
		}
		return a.Sign()
	}
	if bm, ok := scaled(b.m, int(b.e-a.e)); ok {
		return cmpInt(a.m, bm)
	}
	return -b.Sign()
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Equal reports whether a and b have the same value (0.10 equals 0.1).
func (a Num) Equal(b Num) bool { return a.Cmp(b) == 0 }

// Identical reports whether a and b have the same value and the same
// digits (0.10 is not identical to 0.1).
func (a Num) Identical(b Num) bool { return a == b }

// Add returns a+b, exactly, with the finer of the two exponents (the
// inputs' decimals): 0.0161 + 0.01052 is 0.02662. The result does not
// depend on the order of additions. Only a sum past MaxDigits significant
// digits (about 9.2e18 units of its smallest decimal) is not exact: it is
// rounded to float64 precision.
func (a Num) Add(b Num) Num {
	if a.e == b.e {
		s := a.m + b.m
		if (s > a.m) == (b.m > 0) { // no overflow
			return Num{m: s, e: a.e}
		}
	} else {
		lo, hi := a, b
		if lo.e > hi.e {
			lo, hi = hi, lo
		}
		if hm, ok := scaled(hi.m, int(hi.e-lo.e)); ok {
			s := lo.m + hm
			if (s > lo.m) == (hm > 0) || hm == 0 {
				return Num{m: s, e: lo.e}
			}
		}
	}
	if a.m == 0 && b.m == 0 {
		return Num{e: min(a.e, b.e)}
	}
	// Past int64: drop trailing zeros and retry, else round.
	if na, nb := a.normal(), b.normal(); na != a || nb != b {
		return na.Add(nb)
	}
	r, _ := NumOf(a.Float() + b.Float())
	return r
}

// normal returns n without trailing zeros in its mantissa.
func (n Num) normal() Num {
	if n.m == 0 {
		return Num{}
	}
	for n.m%10 == 0 && n.e < maxExp {
		n.m /= 10
		n.e++
	}
	return n
}

// Neg returns -n.
func (n Num) Neg() Num { n.m = -n.m; return n }

// Sub returns a-b (see Add).
func (a Num) Sub(b Num) Num { return a.Add(b.Neg()) }

// Trunc returns n's integer part (toward zero) as an int64, and whether
// it fits.
func (n Num) Trunc() (int64, bool) {
	if n.e >= 0 {
		return scaled(n.m, int(n.e))
	}
	if n.e < -18 {
		return 0, true
	}
	return n.m / pow10[-n.e], true
}

// String returns n as Append writes it.
func (n Num) String() string {
	var buf [48]byte
	return string(n.Append(buf[:0]))
}

// Append appends n as a JSON number with its own digits: plain decimals
// (61837.63, 0.01610000, 1500) unless the magnitude is under 1e-6 or at
// least 1e21, which use an exponent (1e-7, 1e+21), as encoding/json does
// for float64s.
func (n Num) Append(b []byte) []byte {
	m := n.m
	if m < 0 {
		b = append(b, '-')
	}
	var dbuf [20]byte
	d := strconv.AppendUint(dbuf[:0], absU(m), 10)
	e := int(n.e)
	adj := len(d) - 1 + e // exponent of the leading digit
	if m != 0 && (adj < -6 || adj >= 21) || (m == 0 && e > 0) {
		b = append(b, d[0])
		if len(d) > 1 {
			b = append(b, '.')
			b = append(b, d[1:]...)
		}
		b = append(b, 'e')
		if adj >= 0 {
			b = append(b, '+')
		}
		return strconv.AppendInt(b, int64(adj), 10)
	}
	switch {
	case e >= 0:
		b = append(b, d...)
		for ; e > 0; e-- {
			b = append(b, '0')
		}
	case -e < len(d):
		k := len(d) + e
		b = append(b, d[:k]...)
		b = append(b, '.')
		b = append(b, d[k:]...)
	default:
		b = append(b, '0', '.')
		for i := len(d); i < -e; i++ {
			b = append(b, '0')
		}
		b = append(b, d...)
	}
	return b
}

func absU(m int64) uint64 {
	if m < 0 {
		return uint64(-m)
	}
	return uint64(m)
}

// MarshalJSON writes n as a JSON number (Append).
func (n Num) MarshalJSON() ([]byte, error) { return n.Append(nil), nil }

// UnmarshalJSON reads a JSON number, or a string holding one.
func (n *Num) UnmarshalJSON(data []byte) error {
	if len(data) >= 2 && data[0] == '"' && data[len(data)-1] == '"' {
		data = data[1 : len(data)-1]
	}
	v, err := parseNum(data)
	if err != nil {
		return fmt.Errorf("tick: %q: %w", data, err)
	}
	*n = v
	return nil
}

// MarshalText and UnmarshalText make Num usable as text (YAML, flags).
func (n Num) MarshalText() ([]byte, error) { return n.Append(nil), nil }

// UnmarshalText reads ParseNum's format.
func (n *Num) UnmarshalText(data []byte) error {
	v, err := parseNum(data)
	if err != nil {
		return err
	}
	*n = v
	return nil
}
