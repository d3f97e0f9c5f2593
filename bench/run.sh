#!/usr/bin/env bash
# Benchmarks the system as scripts/run.sh starts it (release build, NATS + auth + edge-api on this
# machine) with the open-loop load generator `polylogue-bench`, and writes bench/results/latest.md.
#
#   1. argon2id hash time with the service's parameters (1 thread, then one per core);
#   2. GET /api/version with a session cookie at $RATE req/s for $DURATION s;
#   3. POST /api/login at $LOGIN_RATE req/s for $LOGIN_DURATION s (the rate we claim sustainable);
#   4. login runs at each rate of $LOGIN_SWEEP (where it starts to break), ascending;
#   5. one short login run at $LOGIN_OVER_RATE req/s, above what the machine sustains.
#
# The system gets free ports, a temporary data dir and rate limits off; it is stopped on exit.
# Everything runs on this machine: the load generator competes with the system for its cores.
#
# Environment (all optional):
#   RATE=500  DURATION=20                 version scenario
#   LOGIN_RATE=70  LOGIN_DURATION=$DURATION  login at the sustainable rate
#   LOGIN_SWEEP="80 90 100"  SWEEP_DURATION=$DURATION  login runs around capacity (empty: none)
#   LOGIN_OVER_RATE=150  OVER_DURATION=10     login above capacity (0: skip)
#   ARGON2_ITERATIONS=20  SETTLE=5 (seconds of pause between runs)
#   QUIET_WAIT=600  seconds to wait, before the first run, for other work on the machine to stop
#   QUIET_WAIT_EACH=120  the same before each later run (also lets the previous run's backlog drain)
#   CONNECTIONS=N  cap on requests in flight (default: none)   OUT=bench/results/latest.md
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"

RATE="${RATE:-500}"
DURATION="${DURATION:-20}"
LOGIN_RATE="${LOGIN_RATE:-70}"
LOGIN_DURATION="${LOGIN_DURATION:-$DURATION}"
LOGIN_SWEEP="${LOGIN_SWEEP-80 90 100}"
SWEEP_DURATION="${SWEEP_DURATION:-$DURATION}"
LOGIN_OVER_RATE="${LOGIN_OVER_RATE:-150}"
OVER_DURATION="${OVER_DURATION:-10}"
ARGON2_ITERATIONS="${ARGON2_ITERATIONS:-20}"
SETTLE="${SETTLE:-5}"
QUIET_WAIT="${QUIET_WAIT:-600}"
QUIET_WAIT_EACH="${QUIET_WAIT_EACH:-120}"
CONNECTIONS="${CONNECTIONS:-}"
OUT="${OUT:-$ROOT/bench/results/latest.md}"
USERNAME="demo@polylogue.local"

ensure_rust
ensure_nats

log "building (release): services and polylogue-bench"
cargo build --release --bins --quiet
BENCH="$ROOT/target/release/polylogue-bench"

WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
URL="http://127.0.0.1:$HTTP_PORT"

RUN_PID=""
cleanup() {
  local status=$?
  if [ -n "$RUN_PID" ]; then
    kill -TERM "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  if [ "$status" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "bench/run.sh failed; the system's output and logs are kept in $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting scripts/run.sh (release, rate limits off) at $URL, data in $WORK/data"
POLYLOGUE_PROFILE=release POLYLOGUE_DATA_DIR="$WORK/data" POLYLOGUE_HTTP_PORT="$HTTP_PORT" \
  POLYLOGUE_NATS_PORT=$(free_port) POLYLOGUE_NATS_HTTP_PORT=$(free_port) \
  POLYLOGUE_EDGE_OPS_PORT=$(free_port) POLYLOGUE_AUTH_OPS_PORT=$(free_port) \
  POLYLOGUE_THREAD_OPS_PORT=$(free_port) \
  POLYLOGUE_DEMO_USER="$USERNAME" \
  POLYLOGUE__EDGE__RATE_LIMITS__ENABLED=false \
  POLYLOGUE__TELEMETRY__LOG_FORMAT=json \
  "$ROOT/scripts/run.sh" >"$WORK/run.out" 2>"$WORK/run.err" &
RUN_PID=$!
for _ in $(seq 1 4500); do  # up to 15 min: run.sh rebuilds if sources changed meanwhile
  grep -q "Polylogue is up" "$WORK/run.out" 2>/dev/null && break
  kill -0 "$RUN_PID" 2>/dev/null || { tail -50 "$WORK/run.err" >&2; echo "scripts/run.sh died" >&2; exit 1; }
  sleep 0.2
done
grep -q "Polylogue is up" "$WORK/run.out" || { tail -50 "$WORK/run.err" >&2; echo "scripts/run.sh did not come up" >&2; exit 1; }
BENCH_PASSWORD="$(cat "$WORK/data/demo-password")"
export BENCH_PASSWORD

# The processes run.sh started (its direct children; the tee helpers are left out).
declare -A SERVICE_PID=()
for pid in $(pgrep -P "$RUN_PID"); do
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  case "$comm" in
    nats-server) SERVICE_PID[nats]=$pid ;;
    polylogue-auth) SERVICE_PID[auth]=$pid ;;
    polylogue-edge*) SERVICE_PID[edge]=$pid ;;
  esac
done
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Idle + iowait ticks of the whole machine. Busy time is taken as cores × wall clock − idle: the
# kernel measures idle periods exactly, while its busy counters are sampled at each tick and miss
# most of a load made of sub-millisecond bursts (500 requests/s of 0.3 ms each).
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
# "edge auth nats idle wall_ns": CPU in clock ticks, wall clock in nanoseconds.
cpu_snapshot() {
  for s in edge auth nats; do printf '%s ' "$(cpu_ticks "${SERVICE_PID[$s]:-0}")"; done
  printf '%s %s\n' "$(idle_ticks)" "$(date +%s%N)"
}

# Waits (up to $1 seconds) until the machine is at most 10% busy over 3 s, so that another
# build or test run does not take cores from the benchmark. Prints the busy share it found.
wait_for_quiet() {
  local deadline=$((SECONDS + $1)) a b busy
  while :; do
    a="$(idle_ticks)"; sleep 3; b="$(idle_ticks)"
    busy=$((100 - (b - a) * 100 / (3 * CLK_TCK * $(nproc))))
    [ "$busy" -lt 0 ] && busy=0
    if [ "$busy" -le 10 ] || [ "$SECONDS" -ge "$deadline" ]; then echo "$busy"; return; fi
    log "machine is ${busy}% busy with other work; waiting for it to quieten ($((deadline - SECONDS)) s more at most)"
  done
}

COMMANDS=()
ROWS_ARGON2=()
ROWS_HTTP=()
ROWS_CPU=()
JSONS=()

# measure LABEL ARGS...: runs polylogue-bench ARGS, keeps its table row and JSON line, and the CPU
# seconds that each service, the load generator and everything else on the machine spent meanwhile.
measure() {
  local label="$1"; shift
  if ! kill -0 "$RUN_PID" 2>/dev/null; then
    tail -30 "$WORK/run.err" >&2
    echo "scripts/run.sh has stopped (see above); cannot run: $label" >&2
    exit 1
  fi
  COMMANDS+=("target/release/polylogue-bench $*")
  log "$label: polylogue-bench $*"
  sleep "$SETTLE"
  local busy
  busy="$(wait_for_quiet "$QUIET_WAIT_EACH")"
  [ "$busy" -gt 10 ] && log "starting anyway with the machine ${busy}% busy"
  local before after out json
  before="$(cpu_snapshot)"
  out="$("$BENCH" "$@")"
  after="$(cpu_snapshot)"
  json="$(grep '^{' <<<"$out")"
  JSONS+=("$json")
  grep '^|' <<<"$out" >&2
  if [ "$1" = argon2 ]; then ROWS_ARGON2+=("$(grep '^|' <<<"$out")"); else ROWS_HTTP+=("$(grep '^|' <<<"$out")"); fi
  ROWS_CPU+=("$(python3 - "$label" "$json" "$before" "$after" "$CLK_TCK" "$(nproc)" <<'PY'
import json, sys
label, doc = sys.argv[1], json.loads(sys.argv[2])
before, after = sys.argv[3].split(), sys.argv[4].split()
tck, nproc = float(sys.argv[5]), int(sys.argv[6])
edge, auth, nats, idle = [(int(a) - int(b)) / tck for a, b in zip(after[:4], before[:4])]
wall = (int(after[4]) - int(before[4])) / 1e9
machine = max(0.0, nproc * wall - idle)
bench = doc.get("bench_cpu_s") or 0.0
other = max(0.0, machine - edge - auth - nats - bench)
if doc["kind"] == "http":
    lat = doc["latency_from_scheduled"]
    errors = doc["non_2xx"] + doc["transport_errors"]
    # Sustained: every request 2xx, 2xx throughput within 3% of the target, p99 under one second.
    ok = errors == 0 and doc["achieved_ok_rps"] >= 0.97 * doc["target_rps"] and lat["p99_ms"] < 1000
    verdict = "yes" if ok else "**no**"
    fmt = lambda v: f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    trend = " / ".join(fmt(q["p99_ms"]) for q in doc["latency_by_quarter"])
else:
    verdict = "n/a"
    trend = "n/a"
print(f"| {label} | {wall:.1f} | {edge:.2f} | {auth:.2f} | {nats:.2f} | {bench:.2f} | {other:.2f} | "
      f"{100 * machine / (nproc * wall):.0f}% | {trend} | {verdict} |")
PY
)")
}

http_args() {
  local a=(http --url "$URL" --scenario "$1" --rate "$2" --duration "$3"
    --username "$USERNAME" --password-env BENCH_PASSWORD)
  [ -n "$CONNECTIONS" ] && a+=(--connections "$CONNECTIONS")
  echo "${a[@]}"
}

log "waiting for the machine to be quiet (up to ${QUIET_WAIT}s)"
BUSY_BEFORE="$(wait_for_quiet "$QUIET_WAIT")"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
OTHERS_BEFORE="$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 5 {printf "%s%s (%s%% of a core over its life)", sep, $2, $1; sep=", "}')"

# Word splitting of $(http_args ...) is intended: no argument holds a space.
measure "argon2, 1 thread" argon2 --iterations "$ARGON2_ITERATIONS" --threads 1
measure "argon2, $(nproc) threads" argon2 --iterations "$ARGON2_ITERATIONS" --threads "$(nproc)"
# shellcheck disable=SC2046
measure "version @ $RATE/s" $(http_args version "$RATE" "$DURATION")
# shellcheck disable=SC2046
measure "login @ $LOGIN_RATE/s" $(http_args login "$LOGIN_RATE" "$LOGIN_DURATION")
for r in $LOGIN_SWEEP; do
  # shellcheck disable=SC2046
  measure "login @ $r/s (sweep)" $(http_args login "$r" "$SWEEP_DURATION")
done
AFTER_OVERLOAD=""
if [ "$LOGIN_OVER_RATE" != 0 ]; then
  # shellcheck disable=SC2046
  measure "login @ $LOGIN_OVER_RATE/s (overload)" $(http_args login "$LOGIN_OVER_RATE" "$OVER_DURATION")
  # Does auth keep hashing for callers that have already had their answer (or a 504)?
  a="$(cpu_ticks "${SERVICE_PID[auth]:-0}")"; sleep 10; b="$(cpu_ticks "${SERVICE_PID[auth]:-0}")"
  AFTER_OVERLOAD="$(awk -v d="$((b - a))" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", d / t}')"
  log "auth spent ${AFTER_OVERLOAD} CPU s in the 10 s after the overload run had ended"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (with uncommitted changes)"; fi
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"

mkdir -p "$(dirname "$OUT")"
{
  echo "# Polylogue benchmark results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- commit: $COMMIT"
  echo "- machine: \`nproc\` = $(nproc), $CPU_MODEL, $MEM RAM, $(uname -sr)"
  echo "- toolchain: $(rustc --version)"
  echo "- system: \`scripts/run.sh\` with POLYLOGUE_PROFILE=release, SQLite, one NATS, one auth, one edge-api, rate limits off (\`POLYLOGUE__EDGE__RATE_LIMITS__ENABLED=false\`), JSON logs"
  echo "- machine before the first run: ${BUSY_BEFORE}% busy over 3 s; load average (1/5/15 min) $LOAD_BEFORE (after the last run: $LOAD_AFTER); processes that had used ≥ 5% of a core: ${OTHERS_BEFORE:-none}"
  echo
  echo "**The load generator runs on the same $(nproc) cores as NATS, auth and edge-api**: every CPU"
  echo "second it spends is taken from the system under test (see the CPU table), so these numbers are"
  echo "a lower bound for the services on a machine of their own."
  echo
  echo "## argon2id hash (the cost of one login)"
  echo
  echo "| argon2id (m=19456 KiB, t=2, p=1) | threads | hashes | median ms | min ms | mean ms | max ms | hashes/s (all threads) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS_ARGON2[@]}"
  echo
  echo "## HTTP, open loop (latency from each request's scheduled send time)"
  echo
  echo "| scenario | target req/s | duration s | requests | 2xx | non-2xx | transport errors | achieved 2xx/s | p50 ms | p90 ms | p99 ms | max ms | service p50 / p99 ms | send lag p99 / max ms |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS_HTTP[@]}"
  echo
  echo "Rows in order: version @ $RATE/s, login @ $LOGIN_RATE/s, the sweep (${LOGIN_SWEEP:-none}), overload @ $LOGIN_OVER_RATE/s."
  echo "*achieved 2xx/s* = 2xx answers / (first scheduled send → last answer). *service* = from the"
  echo "moment the request left to its answer (what a closed-loop tool would report); *send lag* = how late"
  echo "the scheduler fired, a sign of a starved load generator when it is large."
  echo
  echo "## CPU seconds spent during each run"
  echo
  echo "| run | elapsed s | edge-api | auth | nats | bench | other processes | machine busy ($(nproc) cores × elapsed = 100%) | p99 ms per quarter of the run | sustained? |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${ROWS_CPU[@]}"
  echo
  echo "CPU seconds (user + system) from \`/proc\`. *other processes* = the machine's busy time minus"
  echo "the services and the load generator: anything else running then (a build, the kernel, this script)."
  echo "*p99 per quarter*: latency from the scheduled time of the requests scheduled in each quarter of"
  echo "the run; growth from quarter to quarter means a queue that grows, i.e. a rate above capacity."
  echo "*sustained?* = every request 2xx, achieved 2xx/s ≥ 97% of the target, p99 < 1 s."
  if [ -n "$AFTER_OVERLOAD" ]; then
    echo
    echo "After the overload run had ended (its last answer received), auth went on to spend"
    echo "**$AFTER_OVERLOAD CPU s in the next 10 s**: work on requests whose callers had already given up."
  fi
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "RATE=$RATE DURATION=$DURATION LOGIN_RATE=$LOGIN_RATE LOGIN_DURATION=$LOGIN_DURATION LOGIN_SWEEP=\"$LOGIN_SWEEP\" SWEEP_DURATION=$SWEEP_DURATION LOGIN_OVER_RATE=$LOGIN_OVER_RATE OVER_DURATION=$OVER_DURATION SETTLE=$SETTLE bench/run.sh"
  echo "# which ran (URL on a free port; BENCH_PASSWORD = the demo user's password from the data dir):"
  printf '%s\n' "${COMMANDS[@]}"
  echo '```'
  echo
  echo "## Raw JSON"
  echo
  echo '```json'
  printf '%s\n' "${JSONS[@]}"
  echo '```'
} >"$OUT"

log "wrote ${OUT#"$ROOT"/}"
cat "$OUT"
