// Package app is tickstream's start-up wiring: it reads the settings
// (flags, TICKSTREAM_* environment, config file), builds the logger, the
// metrics registry, the bus, the feed supervisor and the HTTP server,
// starts them in that order and shuts them down in reverse. The tickstream
// command and Go programs that register their own feed types call Run.
package app
