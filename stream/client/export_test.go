package client

// HistoryURLOf derives the /api/history URL from a WebSocket URL, as Dial
// does.
func HistoryURLOf(wsURL string) (string, error) {
	e, err := newHistoryEndpoint(wsURL, nil, nil)
	return e.url.String(), err
}
