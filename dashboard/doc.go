// Package dashboard holds the browser dashboard, embedded with go:embed so
// that the server binary needs no other files. It holds no data logic: the
// page talks to the server through the public /ws, /sse and /api endpoints.
package dashboard
