package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tickstream/tickstream/stream/app"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tickstream.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestSettingsPrecedence(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, "heartbeat_ms: 1000\nhistory_depth: 7\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{"default", nil, nil, 15000},
		{"file", []string{"--config", file}, nil, 1000},
		{"file named by env", nil, map[string]string{"TICKSTREAM_CONFIG": file}, 1000},
		{"env over file", []string{"--config", file}, map[string]string{"TICKSTREAM_HEARTBEAT_MS": "2000"}, 2000},
		{"flag over env and file", []string{"--config", file, "--heartbeat-ms", "3000"}, map[string]string{"TICKSTREAM_HEARTBEAT_MS": "2000"}, 3000},
		{"flag over default", []string{"--heartbeat-ms=4000"}, nil, 4000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := app.LoadSettings(tt.args, envOf(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if s.HeartbeatMS != tt.want {
				t.Errorf("heartbeat_ms %d, want %d", s.HeartbeatMS, tt.want)
			}
			wantDepth := 1000
			if slicesContain(tt.args, file) || tt.env["TICKSTREAM_CONFIG"] == file {
				wantDepth = 7 // settings the flag and env do not name still come from the file
			}
			if s.HistoryDepth != wantDepth || s.Addr != ":8080" {
				t.Errorf("history_depth %d, addr %q: want %d and the default :8080", s.HistoryDepth, s.Addr, wantDepth)
			}
		})
	}
}

func slicesContain(xs []string, x string) bool {
	for _, s := range xs {
		if s == x {
			return true
		}
	}
	return false
}

func TestSettingsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		config string // config file text, if any
		want   string // the error starts with this
	}{
		{"flag not a number", []string{"--heartbeat-ms", "abc"}, nil, "", "setting heartbeat_ms (flag --heartbeat-ms): "},
		{"flag out of range", []string{"--heartbeat-ms", "5"}, nil, "", "setting heartbeat_ms (flag --heartbeat-ms): "},
		{"env not a number", nil, map[string]string{"TICKSTREAM_MAX_PENDING_BYTES": "lots"}, "", "setting max_pending_bytes (env TICKSTREAM_MAX_PENDING_BYTES): "},
		{"env bad bool", nil, map[string]string{"TICKSTREAM_DISABLE_WEBSOCKET": "maybe"}, "", "setting disable_websocket (env TICKSTREAM_DISABLE_WEBSOCKET): "},
		{"file out of range", nil, nil, "heartbeat_ms: 5\n", "setting heartbeat_ms (config file "},
		{"file not a number", nil, nil, "heartbeat_ms: abc\n", "setting heartbeat_ms (config file "},
		{"file not a number, later line", nil, nil, "addr: \":9000\"\nhistory_depth: 5\nheartbeat_ms: abc\nretry_ms: 200\n", "setting heartbeat_ms (config file "},
		{"file unknown key", nil, nil, "heartbeat: 100\n", "setting "},
		{"bad log level", []string{"--log-level", "loud"}, nil, "", "setting log_level "},
		{"missing config file", []string{"--config", "/nonexistent/tickstream.yaml"}, nil, "", "setting config "},
		{"auth neither off nor on", []string{"--auth", "yes"}, nil, "", "setting auth "},
		{"auth on without a key", nil, map[string]string{"TICKSTREAM_AUTH": "on"}, "", "setting auth "},
		{"pprof beyond loopback", []string{"--pprof-addr", "0.0.0.0:6060"}, nil, "", "setting pprof_addr "},
		{"pprof without a port", nil, map[string]string{"TICKSTREAM_PPROF_ADDR": "127.0.0.1"}, "", "setting pprof_addr "},
		{"short HS256 secret", []string{"--auth", "on", "--auth-hs256-secret", "short"}, nil, "", "setting auth_hs256_secret "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := tt.args
			if tt.config != "" {
				args = append([]string{"--config", writeConfig(t, tt.config)}, args...)
			}
			_, err := app.LoadSettings(args, envOf(tt.env), io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line starting with %q", msg, tt.want)
			}
			var se *app.SettingError
			if !errors.As(err, &se) {
				t.Errorf("error %T is not a *app.SettingError", err)
			}
		})
	}
	t.Run("unknown key names it", func(t *testing.T) {
		t.Parallel()
		_, err := app.LoadSettings([]string{"--config", writeConfig(t, "heartbeat: 100\n")}, envOf(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "heartbeat") {
			t.Errorf("error %v: want it to name the unknown key", err)
		}
	})
	t.Run("help", func(t *testing.T) {
		t.Parallel()
		var out strings.Builder
		_, err := app.LoadSettings([]string{"--help"}, envOf(nil), &out)
		if !errors.Is(err, app.ErrHelp) || !strings.Contains(out.String(), "--heartbeat-ms") && !strings.Contains(out.String(), "-heartbeat-ms") {
			t.Errorf("--help: %v, usage %q", err, out.String())
		}
	})
}

// A key file that cannot be loaded stops start-up naming its setting.
func TestAuthKeyFileErrorNamesSetting(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.jwks")
	s, err := app.LoadSettings([]string{"--auth", "on", "--auth-jwks-file", missing, "--addr", "127.0.0.1:0"}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = app.RunListener(context.Background(), s, ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var se *app.SettingError
	if !errors.As(err, &se) || se.Setting != "auth_jwks_file" || strings.Contains(err.Error(), "\n") {
		t.Errorf("RunListener: %v, want one line naming auth_jwks_file", err)
	}
}
