package feeds

import "github.com/tickstream/tickstream/feeds/tick"

// The tick model lives in package tick, which imports nothing of the feed
// framework, so that the bus can use it without YAML or the supervisor.
// These names let feed code keep writing feeds.Tick.
type (
	Tick      = tick.Tick
	Field     = tick.Field
	TickError = tick.Error
)

// Market field names and limits; see package tick.
const (
	FieldPrice      = tick.FieldPrice
	FieldSize       = tick.FieldSize
	FieldBid        = tick.FieldBid
	FieldAsk        = tick.FieldAsk
	FieldBidSize    = tick.FieldBidSize
	FieldAskSize    = tick.FieldAskSize
	FieldVolume     = tick.FieldVolume
	MaxTopicLen     = tick.MaxTopicLen
	MaxFieldNameLen = tick.MaxFieldNameLen
	MaxFields       = tick.MaxFields
)

// Tick errors and helpers; see package tick.
var (
	MarketFields    = tick.MarketFields
	ErrBadTopic     = tick.ErrBadTopic
	ErrBadField     = tick.ErrBadField
	ErrNonFinite    = tick.ErrNonFinite
	ErrTooManyField = tick.ErrTooManyField
	ErrBadJSON      = tick.ErrBadJSON
	ValidTopic      = tick.ValidTopic
	ValidFieldName  = tick.ValidFieldName
	ParseTick       = tick.ParseTick
	AppendFloat     = tick.AppendFloat
)

// F returns a field from a float64; see tick.F.
var F = tick.F
