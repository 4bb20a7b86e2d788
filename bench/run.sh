#!/usr/bin/env bash
# bench/run.sh — runs tickbench scenarios A–F against tickstream and the
# reference broadcaster, each run on a fresh server process, and writes a
# markdown table of medians (min–max) over the runs.
#
#   bench/run.sh [--scale F] [--runs N] [--duration D] [--scenarios "A B C D E F"]
#                [--servers "tickstream reference"] [--pin-server CPUS] [--pin-generator CPUS]
#                [--out DIR] [--tickstream-bin PATH]
#
# --scale multiplies the number of clients (not the tick rates); use 0.1 on
# a small box. Servers: tickstream (with its durable store, the default),
# tickstream-mem (data_dir "": memory only, as the reference), reference. The full run (scale 1) is meant for a 16-core machine with
# --pin-server 0-1 --pin-generator 2-15. Loopback only.
set -euo pipefail

SCALE=1 RUNS=3 DURATION=15s SCENARIOS="A B C D E F" SERVERS="tickstream reference"
PIN_SERVER="" PIN_GEN="" OUT="" TS_BIN=""
while [ $# -gt 0 ]; do
	case "$1" in
	--scale) SCALE=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	--scenarios) SCENARIOS=$2; shift 2 ;;
	--servers) SERVERS=$2; shift 2 ;;
	--pin-server) PIN_SERVER=$2; shift 2 ;;
	--pin-generator) PIN_GEN=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--tickstream-bin) TS_BIN=$2; shift 2 ;; # a prebuilt tickstream (e.g. a before/after comparison)
	-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
command -v jq >/dev/null || { echo "run.sh: needs jq" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
BIN=$OUT/bin
mkdir -p "$BIN"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "run.sh: building into $BIN" >&2
(cd "$ROOT" && go build -o "$BIN/tickbench" ./cmd/tickbench)
if [ -n "$TS_BIN" ]; then cp "$TS_BIN" "$BIN/tickstream"; else (cd "$ROOT" && go build -o "$BIN/tickstream" ./cmd/tickstream); fi
(cd "$ROOT/bench/reference" && go build -o "$BIN/reference" .)

# tickstream with one quiet sim feed on a topic the benchmark does not use.
cat >"$OUT/tickstream.yaml" <<'YAML'
log_level: warn
accept_rate: 100000
accept_burst: 100000
accept_rate_per_ip: 100000
accept_burst_per_ip: 100000
max_conns_per_ip: 1000000
max_conns: 1000000
feeds:
  - name: quiet
    type: sim
    options: {symbols: [SIM-QUIET], rate: 1}
YAML

scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); if (v < 1) v = 1; print v }'; }

# scenario NAME → tickbench flags (without --url/--pid)
scenario() {
	case "$1" in
	A) echo "--clients $(scaled 1000) --topics 1 --per-client 1 --rate 100 --throttle-ms 0" ;;
	B) echo "--clients $(scaled 5000) --topics 50 --per-client 5 --rate 1000 --throttle-ms 0" ;;
	C) echo "--clients $(scaled 1000) --topics 1 --per-client 1 --throttle-ms 0" ;; # --rate ramps
	D) echo "--clients $(scaled 10000) --idle" ;;
	E) echo "--clients $(scaled 1000) --topics 1 --per-client 1 --rate 100 --throttle-ms 0 --transport sse" ;;
	F) echo "--clients $(scaled 1000) --topics 8 --per-client 8 --rate 20000 --throttle-ms 100" ;;
	esac
}

PID=""
start_server() { # $1 = tickstream|reference; sets PID and PORT
	local pin=()
	[ -n "$PIN_SERVER" ] && command -v taskset >/dev/null && pin=(taskset -c "$PIN_SERVER")
	PORT=$((20000 + RANDOM % 20000))
	case "$1" in
	tickstream | tickstream-mem)
		# A fresh store per run (the default data_dir, "data", would carry
		# one run's topics into the next); tickstream-mem runs with none.
		local data="$OUT/data"
		rm -rf "$data"
		[ "$1" = tickstream-mem ] && data=""
		"${pin[@]}" "$BIN/tickstream" --addr "127.0.0.1:$PORT" --config "$OUT/tickstream.yaml" --data-dir "$data" >>"$OUT/server.log" 2>&1 & ;;
	reference) "${pin[@]}" "$BIN/reference" --addr "127.0.0.1:$PORT" >>"$OUT/server.log" 2>&1 & ;;
	esac
	PID=$!
	for _ in $(seq 100); do
		curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "run.sh: $1 did not come up on port $PORT" >&2
	return 1
}
stop_server() {
	[ -n "$PID" ] || return 0
	kill "$PID" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=""
}
trap stop_server EXIT

bench() { # $1 label, rest: tickbench flags; prints the JSON line
	local label=$1; shift
	local gen=()
	[ -n "$PIN_GEN" ] && gen=(--pin-generator "$PIN_GEN")
	"$BIN/tickbench" --url "http://127.0.0.1:$PORT" --pid "$PID" --label "$label" "${gen[@]}" "$@" \
		2>>"$OUT/tickbench.log" | tee -a "$OUT/tickbench.log" | tail -n 1
}

# warmup: a short discarded run on the fresh server (first connections,
# worker pools, heap growth), on topics the measured run does not use.
warmup() {
	"$BIN/tickbench" --url "http://127.0.0.1:$PORT" --clients 10 --topics 2 --per-client 1 --rate 200 \
		--duration 1s --drain 1s --topic-prefix warm.T >/dev/null 2>>"$OUT/tickbench.log" || true
}

# ok JSON TARGET: did the server keep up at this rate? (At throttle 0 an
# update covering several ticks means a queue fell behind: not keeping up.)
keeps_up() {
	jq -e --argjson r "$2" '.missing == 0 and .dup == 0 and .out_of_order == 0 and .lagging_status == 0
		and .client_errors == 0 and .p99_ms < 250 and .covered >= .expected and .publish_rate >= 0.95 * $r
		and .delivered >= .covered' <<<"$1" >/dev/null
}

for sc in $SCENARIOS; do
	for srv in $SERVERS; do
		if [ "$srv" = reference ] && [ "$sc" = F ]; then
			echo "run.sh: $sc/$srv skipped (the reference does not coalesce: throttle 0 only)" >&2
			continue
		fi
		for run in $(seq "$RUNS"); do
			start_server "$srv"
			label="$sc/$srv/$run"
			echo "run.sh: $label (pid $PID, port $PORT)" >&2
			[ "$sc" = D ] || warmup
			# shellcheck disable=SC2046
			if [ "$sc" = C ]; then
				# Saturation: double the rate until the server stops keeping
				# up; the result is the last rate it kept up with.
				best="" rate=500 j="{}"
				for _ in $(seq 10); do
					j=$(bench "$label" $(scenario C) --rate "$rate" --duration 4s --drain 3s) || break
					keeps_up "$j" "$rate" || break
					best=$(jq -c --argjson r "$rate" '. + {sat_rate: $r}' <<<"$j")
					rate=$((rate * 2))
				done
				[ -n "$best" ] || best=$(jq -c '. + {sat_rate: 0}' <<<"$j")
				echo "$best" | jq -c --arg s "$sc" --arg v "$srv" --argjson n "$run" '. + {scenario: $s, server: $v, run: $n}' >>"$RESULTS"
			else
				d=$DURATION
				[ "$sc" = D ] && d=5s
				if j=$(bench "$label" $(scenario "$sc") --duration "$d"); then
					echo "$j" | jq -c --arg s "$sc" --arg v "$srv" --argjson n "$run" '. + {scenario: $s, server: $v, run: $n}' >>"$RESULTS"
				else
					echo "run.sh: $label failed (see $OUT/tickbench.log)" >&2
				fi
			fi
			stop_server
		done
	done
done

# Markdown table: median (min–max) over the runs.
TABLE=$OUT/results.md
{
	echo "# tickbench results"
	echo
	echo "scale $SCALE, $RUNS runs, duration $DURATION, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), server pinned: ${PIN_SERVER:-no}, generator pinned: ${PIN_GEN:-no}, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "| scenario | server | clients | delivered/s | p50 ms | p99 ms | max ms | missing/dup/ooo | RSS/conn KiB | server CPU-s per M | server cores | saturation ticks/s |"
	echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	jq -s -r '
	  def f(d): if . == null then "-" elif d == 0 then (. | round | tostring) else ((. * pow(10; d) | round) / pow(10; d) | tostring) end;
	  def stat(k; d): map(.[k]) | sort | if length == 0 then "-" else
	      "\(.[(length - 1) / 2 | floor] | f(d)) (\(.[0] | f(d))–\(.[-1] | f(d)))" end;
	  group_by([.scenario, .server]) | .[] |
	  "| \(.[0].scenario) | \(.[0].server) | \(.[0].clients) | \(if .[0].mode == "idle" then "-" else stat("delivered_rate"; 0) end) | \(if .[0].mode == "idle" then "-" else stat("p50_ms"; 2) end) | \(if .[0].mode == "idle" then "-" else stat("p99_ms"; 2) end) | \(if .[0].mode == "idle" then "-" else stat("max_ms"; 1) end) | \(map(.missing) | add)/\(map(.dup) | add)/\(map(.out_of_order) | add) | \(map(.rss_per_conn / 1024) | sort | "\(.[(length - 1) / 2 | floor] | f(1)) (\(.[0] | f(1))–\(.[-1] | f(1)))") | \(if .[0].mode == "idle" then "-" else stat("server_cpu_s_per_m"; 2) end) | \(if .[0].mode == "idle" then "-" else stat("server_cpu_util"; 2) end) | \(if .[0].scenario == "C" then stat("sat_rate"; 0) else "-" end) |"
	' "$RESULTS"
} >"$TABLE"
cat "$TABLE"
echo "run.sh: results in $OUT (results.jsonl, results.md, tickbench.log)" >&2
