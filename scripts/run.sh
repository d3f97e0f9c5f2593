#!/usr/bin/env bash
# Runs the whole system on this machine with embedded defaults: NATS (JetStream), the local model
# server (llama.cpp + SmolLM2-135M-Instruct), the auth, thread, inference-router, ollama-loader
# and summarizer services and the edge API, plus a
# demo user. Installs what is missing, runs in the foreground and stops everything it started on
# Ctrl-C / SIGTERM.
#
# Environment (all optional):
#   POLYLOGUE_HTTP_PORT        edge HTTP port                  (8080)
#   POLYLOGUE_NATS_PORT        NATS client port                (4222)
#   POLYLOGUE_NATS_HTTP_PORT   NATS monitoring port            (8222)
#   POLYLOGUE_EDGE_OPS_PORT    edge /metrics + /healthz        (9180)
#   POLYLOGUE_AUTH_OPS_PORT    auth /metrics + /healthz        (9181)
#   POLYLOGUE_THREAD_OPS_PORT  thread /metrics + /healthz      (9182)
#   POLYLOGUE_ROUTER_OPS_PORT  inference-router ops port       (9183)
#   POLYLOGUE_LOADER_OPS_PORT  ollama-loader ops port          (9184)
#   POLYLOGUE_SUMMARIZER_OPS_PORT summarizer ops port          (9185)
#   POLYLOGUE_LLAMA_PORT       local model server (OpenAI API) (8090; the catalog's smollm2-135m-local)
#   POLYLOGUE_LLAMA_THREADS    CPU threads of the local model  (2)
#   POLYLOGUE_NO_LOCAL_MODEL   1: do not install or start the local model server
#   POLYLOGUE_DATA_DIR         databases, NATS store, config   (.data)
#   POLYLOGUE_PROFILE          cargo profile: release | dev    (release)
#   POLYLOGUE_DEMO_USER        demo username                   (demo@polylogue.local)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

HTTP_PORT="${POLYLOGUE_HTTP_PORT:-8080}"
NATS_PORT="${POLYLOGUE_NATS_PORT:-4222}"
NATS_HTTP_PORT="${POLYLOGUE_NATS_HTTP_PORT:-8222}"
EDGE_OPS_PORT="${POLYLOGUE_EDGE_OPS_PORT:-9180}"
AUTH_OPS_PORT="${POLYLOGUE_AUTH_OPS_PORT:-9181}"
THREAD_OPS_PORT="${POLYLOGUE_THREAD_OPS_PORT:-9182}"
ROUTER_OPS_PORT="${POLYLOGUE_ROUTER_OPS_PORT:-9183}"
LOADER_OPS_PORT="${POLYLOGUE_LOADER_OPS_PORT:-9184}"
SUMMARIZER_OPS_PORT="${POLYLOGUE_SUMMARIZER_OPS_PORT:-9185}"
LLAMA_PORT="${POLYLOGUE_LLAMA_PORT:-8090}"
LOCAL_MODEL=1
[ "${POLYLOGUE_NO_LOCAL_MODEL:-}" = 1 ] && LOCAL_MODEL=0
DATA_DIR="$(mkdir -p "${POLYLOGUE_DATA_DIR:-$ROOT/.data}" && cd "${POLYLOGUE_DATA_DIR:-$ROOT/.data}" && pwd)"
PROFILE="${POLYLOGUE_PROFILE:-release}"
DEMO_USER="${POLYLOGUE_DEMO_USER:-demo@polylogue.local}"

ensure_rust
ensure_nats
if [ "$LOCAL_MODEL" = 1 ]; then
  ensure_llama || { echo "could not install the local model server; POLYLOGUE_NO_LOCAL_MODEL=1 skips it" >&2; exit 1; }
fi

log "building ($PROFILE)"
cargo build --profile "$PROFILE" --bins --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"

# A local config with a signing key of its own, made once and kept (mode 0600).
CONFIG="$DATA_DIR/polylogue.toml"
if [ ! -f "$CONFIG" ]; then
  log "writing $CONFIG with a fresh JWT signing key"
  umask 077
  cat >"$CONFIG" <<TOML
# Made by scripts/run.sh for a single-machine run. See docs/configuration.md.
environment = "development"

[edge]
# Plain HTTP on localhost: browsers and curl drop Secure cookies there.
cookie_secure = false

[[jwt.keys]]
kid = "local-1"
secret = "$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
TOML
  umask 022
fi
if [ ! -f "$DATA_DIR/demo-password" ]; then
  (umask 077; head -c 12 /dev/urandom | base64 | tr -d '\n/+=' >"$DATA_DIR/demo-password")
fi
DEMO_PASSWORD="$(cat "$DATA_DIR/demo-password")"

export POLYLOGUE_CONFIG="$CONFIG"
export POLYLOGUE__DATA_DIR="$DATA_DIR"
export POLYLOGUE__NATS__URL="nats://127.0.0.1:$NATS_PORT"
export POLYLOGUE__EDGE__LISTEN="127.0.0.1:$HTTP_PORT"
export POLYLOGUE__EDGE__OPS_LISTEN="127.0.0.1:$EDGE_OPS_PORT"
export POLYLOGUE__AUTH__OPS_LISTEN="127.0.0.1:$AUTH_OPS_PORT"
export POLYLOGUE__THREAD__OPS_LISTEN="127.0.0.1:$THREAD_OPS_PORT"
export POLYLOGUE__INFERENCE__OPS_LISTEN="127.0.0.1:$ROUTER_OPS_PORT"
export POLYLOGUE__LOADER__OPS_LISTEN="127.0.0.1:$LOADER_OPS_PORT"
export POLYLOGUE__SUMMARIZER__OPS_LISTEN="127.0.0.1:$SUMMARIZER_OPS_PORT"
# The shipped catalog, with the local model where this run starts it.
sed "s#http://127.0.0.1:8090/v1#http://127.0.0.1:$LLAMA_PORT/v1#" deploy/catalog/models.toml >"$DATA_DIR/catalog.toml"
export POLYLOGUE__CATALOG__PATH="$DATA_DIR/catalog.toml"
export POLYLOGUE__TELEMETRY__LOG_FORMAT="${POLYLOGUE__TELEMETRY__LOG_FORMAT:-pretty}"

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  if [ "${#PIDS[@]}" -gt 0 ]; then
    log "stopping"
    # Reverse start order: the edge drains first, NATS goes last.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
      kill -TERM "${PIDS[$i]}" 2>/dev/null || true
      wait "${PIDS[$i]}" 2>/dev/null || true
    done
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$DATA_DIR/logs" "$DATA_DIR/nats"
log "starting NATS on 127.0.0.1:$NATS_PORT"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_HTTP_PORT" -js -sd "$DATA_DIR/nats" \
  >"$DATA_DIR/logs/nats.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$NATS_HTTP_PORT/healthz?js-enabled-only=true" 20

if [ "$LOCAL_MODEL" = 1 ]; then
  log "starting the local model server (llama.cpp, SmolLM2-135M-Instruct) on 127.0.0.1:$LLAMA_PORT"
  start_llama "$LLAMA_PORT" "$DATA_DIR/logs/llama.log"  # adds its PID to PIDS
  LOCAL_MODEL_LINE="local model: http://127.0.0.1:$LLAMA_PORT/v1 (SmolLM2-135M-Instruct, OpenAI API)"
else
  log "POLYLOGUE_NO_LOCAL_MODEL=1: not starting the local model server (smollm2-135m-local will be unreachable)"
  LOCAL_MODEL_LINE="local model: not started (POLYLOGUE_NO_LOCAL_MODEL=1)"
fi

log "starting auth"
"$BIN/polylogue-auth" 2> >(tee -a "$DATA_DIR/logs/auth.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$AUTH_OPS_PORT/healthz" 60

log "starting thread"
"$BIN/polylogue-thread" 2> >(tee -a "$DATA_DIR/logs/thread.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$THREAD_OPS_PORT/healthz" 60

log "starting inference-router"
"$BIN/polylogue-inference-router" 2> >(tee -a "$DATA_DIR/logs/inference-router.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$ROUTER_OPS_PORT/healthz" 60

log "starting ollama-loader (local models' status and load jobs)"
"$BIN/polylogue-ollama-loader" 2> >(tee -a "$DATA_DIR/logs/ollama-loader.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$LOADER_OPS_PORT/healthz" 60

log "starting summarizer"
"$BIN/polylogue-summarizer" 2> >(tee -a "$DATA_DIR/logs/summarizer.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$SUMMARIZER_OPS_PORT/healthz" 60

log "starting edge-api on 127.0.0.1:$HTTP_PORT"
"$BIN/polylogue-edge-api" 2> >(tee -a "$DATA_DIR/logs/edge-api.log" >&2) &
PIDS+=($!)
wait_http "http://127.0.0.1:$EDGE_OPS_PORT/healthz" 60

DEMO_PASSWORD="$DEMO_PASSWORD" "$BIN/polylogue" user add --username "$DEMO_USER" --display-name "Demo User" \
  --password-env DEMO_PASSWORD --if-not-exists >&2

cat <<INFO

  Polylogue is up at http://127.0.0.1:$HTTP_PORT

  demo user:  $DEMO_USER
  password:   $DEMO_PASSWORD

  curl -c jar -H 'content-type: application/json' \\
       -d '{"username":"$DEMO_USER","password":"$DEMO_PASSWORD"}' http://127.0.0.1:$HTTP_PORT/api/login
  curl -b jar http://127.0.0.1:$HTTP_PORT/api/models
  curl -b jar http://127.0.0.1:$HTTP_PORT/api/models/smollm2-135m-local/status
  curl -b jar -H 'content-type: application/json' -d '{"title":"first chat"}' http://127.0.0.1:$HTTP_PORT/api/threads
  # then, with the thread id it returns, chat with the local model (streamed):
  curl -N -b jar -H 'content-type: application/json' -d '{"content":"Hello!","stream":true}' \
       http://127.0.0.1:$HTTP_PORT/api/threads/THREAD_ID/models/smollm2-135m-local/messages
  # and summarize that history now:
  curl -b jar -X POST http://127.0.0.1:$HTTP_PORT/api/threads/THREAD_ID/models/smollm2-135m-local/summarize
  curl -b jar -X POST http://127.0.0.1:$HTTP_PORT/api/logout

  metrics: http://127.0.0.1:$EDGE_OPS_PORT/metrics  http://127.0.0.1:$AUTH_OPS_PORT/metrics  http://127.0.0.1:$THREAD_OPS_PORT/metrics  http://127.0.0.1:$ROUTER_OPS_PORT/metrics  http://127.0.0.1:$LOADER_OPS_PORT/metrics  http://127.0.0.1:$SUMMARIZER_OPS_PORT/metrics
  $LOCAL_MODEL_LINE
  logs:    $DATA_DIR/logs        Ctrl-C stops everything.

INFO

# Foreground until a signal, or until any process dies (then stop the rest).
wait -n "${PIDS[@]}"
log "a process exited; stopping the rest"
exit 1
