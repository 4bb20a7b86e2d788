package dashboard_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestClientUnits runs the JavaScript unit tests of the client library
// (test/*.test.mjs) with node's built-in test runner, so that go test
// covers them. It skips when node is not installed.
func TestClientUnits(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("skipping: node is not on PATH (the JavaScript unit tests need node 18 or later)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	files, err := filepath.Glob(filepath.Join("test", "*.test.mjs"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test/*.test.mjs files (%v)", err)
	}
	// Name the files: node 21+ reads a directory argument as a glob.
	cmd := exec.CommandContext(ctx, node, append([]string{"--test", "--test-reporter=spec"}, files...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test %v: %v\n%s", files, err, out)
	}
	t.Logf("node --test %v:\n%s", files, out)
}
