#!/usr/bin/env bash
# Thread listing and search at scale (issue "Threads, per-model message histories and thread
# search"): seeds MAIN threads for one user and OTHERS x PER_OTHER for other users through the
# thread service's own NATS API (validation, store, events, search indexing), waits for the search
# index to catch up, then measures through the edge at a fixed rate (open loop, latency from the
# scheduled send time):
#   - GET /api/threads?limit=20                      first page
#   - GET /api/threads?limit=20&cursor=<50,000 deep> a deep page
#   - GET /api/threads?q=zeppelin                    a selective search (0.1% of the user's threads)
#   - GET /api/threads?q=kubernetes                  a broad search (2% of the user's threads)
# Writes bench/results/threads.md. The load generator shares the machine's cores with the system.
#
# Environment: MAIN=100000 OTHERS=900 PER_OTHER=1000 RATE=200 DURATION=20 DEEP=50000
#              OUT=bench/results/threads.md
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"

MAIN="${MAIN:-100000}"
OTHERS="${OTHERS:-900}"
PER_OTHER="${PER_OTHER:-1000}"
RATE="${RATE:-200}"
DURATION="${DURATION:-20}"
DEEP="${DEEP:-50000}"
OUT="${OUT:-$ROOT/bench/results/threads.md}"
USERNAME="demo@polylogue.local"

ensure_rust
ensure_nats
log "building (release)"
cargo build --release --bins --quiet
BIN="$ROOT/target/release"

WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
NATS_PORT=$(free_port)
URL="http://127.0.0.1:$HTTP_PORT"
RUN_PID=""
cleanup() {
  if [ -n "$RUN_PID" ]; then kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting scripts/run.sh (release, rate limits off) at $URL"
POLYLOGUE_PROFILE=release POLYLOGUE_DATA_DIR="$WORK/data" POLYLOGUE_HTTP_PORT="$HTTP_PORT" \
  POLYLOGUE_NATS_PORT="$NATS_PORT" POLYLOGUE_NATS_HTTP_PORT=$(free_port) \
  POLYLOGUE_EDGE_OPS_PORT=$(free_port) POLYLOGUE_AUTH_OPS_PORT=$(free_port) \
  POLYLOGUE_THREAD_OPS_PORT=$(free_port) POLYLOGUE_DEMO_USER="$USERNAME" \
  POLYLOGUE__EDGE__RATE_LIMITS__ENABLED=false POLYLOGUE__TELEMETRY__LOG_LEVEL=warn \
  POLYLOGUE__TELEMETRY__LOG_FORMAT=json \
  "$ROOT/scripts/run.sh" >"$WORK/run.out" 2>"$WORK/run.err" &
RUN_PID=$!
for _ in $(seq 1 600); do
  grep -q "Polylogue is up" "$WORK/run.out" 2>/dev/null && break
  kill -0 "$RUN_PID" 2>/dev/null || { tail -30 "$WORK/run.err" >&2; exit 1; }
  sleep 0.2
done
export BENCH_PASSWORD="$(cat "$WORK/data/demo-password")"

# The demo user's id, from its access token.
curl -s -c "$WORK/jar" -H 'content-type: application/json' \
  -d "{\"username\":\"$USERNAME\",\"password\":\"$BENCH_PASSWORD\"}" "$URL/api/login" >/dev/null
OWNER=$(python3 - "$WORK/jar" <<'PY'
import base64, json, sys
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) >= 7 and parts[5] == "polylogue_access":
        p = parts[6].split(".")[1]
        print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])
PY
)

log "seeding $MAIN threads for $OWNER and $OTHERS x $PER_OTHER for others"
SEED_LOG="$WORK/seed.log"
"$BIN/polylogue-seed-threads" --nats-url "nats://127.0.0.1:$NATS_PORT" --owner "$OWNER" \
  --main "$MAIN" --others "$OTHERS" --per-other "$PER_OTHER" | tee "$SEED_LOG"

log "walking $DEEP threads deep for the deep-page cursor"
CURSOR=$(python3 - "$URL" "$WORK/jar" "$DEEP" <<'PY'
import http.cookiejar, json, sys, urllib.request
url, jar_path, deep = sys.argv[1], sys.argv[2], int(sys.argv[3])
jar = http.cookiejar.MozillaCookieJar(jar_path); jar.load(ignore_discard=True, ignore_expires=True)
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
cursor, seen = None, 0
while seen < deep:
    q = f"{url}/api/threads?limit=100" + (f"&cursor={cursor}" if cursor else "")
    body = json.load(opener.open(q))
    seen += len(body["data"]["threads"])
    cursor = body["pagination"]["cursor"]
    if not cursor: break
print(cursor or "")
PY
)
[ -n "$CURSOR" ] || { echo "could not reach $DEEP threads deep" >&2; exit 1; }

run() { # label path [--header]
  "$BIN/polylogue-bench" http --url "$URL" --scenario get --path "$2" --label "$1" \
    --rate "$RATE" --duration "$DURATION" --username "$USERNAME" --password-env BENCH_PASSWORD ${3:-}
}
log "measuring at $RATE req/s for $DURATION s each"
{
  run "GET /api/threads (first page, limit 20)" "/api/threads?limit=20" --header
  sleep 3
  run "GET /api/threads (page $DEEP deep, limit 20)" "/api/threads?limit=20&cursor=$CURSOR"
  sleep 3
  run "GET /api/threads?q=zeppelin (0.1% match)" "/api/threads?q=zeppelin"
  sleep 3
  run "GET /api/threads?q=kubernetes (2% match)" "/api/threads?q=kubernetes"
} >"$WORK/runs.txt"

TOTAL=$((MAIN + OTHERS * PER_OTHER))
{
  echo "# Thread listing and search at scale"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- commit: $(git rev-parse --short=12 HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: \`nproc\` = $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "- system: \`scripts/run.sh\` release build, SQLite thread store + FTS5 search, one NATS, auth, thread, edge-api; rate limits off"
  echo "- data: $TOTAL threads — $MAIN for the measured user, $OTHERS other users × $PER_OTHER — created through \`thread.create\` on NATS"
  echo "- the load generator runs on the same $(nproc) cores as the system"
  echo
  echo "## Seeding"
  echo
  echo '```'
  grep -E "seeded|caught up" "$SEED_LOG"
  echo '```'
  echo
  echo "## Through the edge, open loop at $RATE req/s for $DURATION s each"
  echo
  grep '^|' "$WORK/runs.txt"
  echo
  echo "Latency is from each request's scheduled send time; *service* from the moment it left."
  echo
  echo "## Command"
  echo
  echo '```sh'
  echo "MAIN=$MAIN OTHERS=$OTHERS PER_OTHER=$PER_OTHER RATE=$RATE DURATION=$DURATION DEEP=$DEEP bench/threads.sh"
  echo '```'
  echo
  echo "## Raw"
  echo
  echo '```'
  grep -v '^|' "$WORK/runs.txt" || true
  echo '```'
} >"$OUT"
cat "$OUT"
