#!/usr/bin/env bash
# The README's promise, checked with curl against a running system (scripts/run.sh):
# log in as the demo user, read /api/version with the cookie, log out, be refused with the old cookie;
# with LLAMA_URL, also that the local model server lists SmolLM2-135M-Instruct and that the demo user
# can chat with it through the edge.
# Usage: scripts/smoke.sh BASE_URL USERNAME PASSWORD [LLAMA_URL (http://127.0.0.1:8090/v1)]
set -euo pipefail
BASE="$1" USER_NAME="$2" PASSWORD="$3" LLAMA_URL="${4:-}"
JAR="$(mktemp)"; OLD="$(mktemp)"
trap 'rm -f "$JAR" "$OLD"' EXIT
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

code=$(status -c "$JAR" -H 'content-type: application/json' \
  -d "{\"username\":\"$USER_NAME\",\"password\":\"$PASSWORD\"}" "$BASE/api/login")
[ "$code" = 200 ] || fail "login answered $code"
cp "$JAR" "$OLD"
body=$(curl -sf -b "$JAR" "$BASE/api/version") || fail "version refused with the session cookie"
echo "$body" | grep -q '"success":true' || fail "version body: $body"
echo "$body" | grep -q '"commit"' || fail "version body: $body"
body=$(curl -sf -b "$JAR" -H 'content-type: application/json' -d '{"title":"Smoke test thread"}' "$BASE/api/threads") \
  || fail "creating a thread failed"
echo "$body" | grep -q '"title":"Smoke test thread"' || fail "thread body: $body"
THREAD_ID=$(echo "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["thread"]["id"])')
body=$(curl -sf -b "$JAR" "$BASE/api/models") || fail "listing models failed"
echo "$body" | grep -q '"id":"smollm2-135m-local"' || fail "models body: $body"
if [ -n "$LLAMA_URL" ]; then
  body=$(curl -s -m 120 -b "$JAR" -H 'content-type: application/json' \
    -d '{"content":"Say hello.","maxTokens":8,"temperature":0}' \
    "$BASE/api/threads/$THREAD_ID/models/smollm2-135m-local/messages") || fail "chat request failed"
  echo "$body" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["success"], d; assert d["data"]["assistantMessage"]["content"].strip(), d' \
    || fail "chat with the local model: $body"
  echo "smoke: chat with smollm2-135m-local through the edge: ok"
  # The ollama-loader reports the running local model as loaded (it polls every 2 s).
  for _ in $(seq 1 50); do
    body=$(curl -sf -b "$JAR" "$BASE/api/models/smollm2-135m-local/status") || fail "model status failed"
    echo "$body" | grep -q '"status":"loaded"' && break
    sleep 0.2
  done
  echo "$body" | grep -q '"status":"loaded"' || fail "smollm2-135m-local status: $body"
  echo "smoke: smollm2-135m-local reported loaded by the ollama-loader: ok"
fi
body=$(curl -sf -b "$JAR" "$BASE/api/threads") || fail "listing threads failed"
echo "$body" | grep -q '"totalCount"' || fail "thread list body: $body"
code=$(status -b "$JAR" -c "$JAR" -X POST "$BASE/api/logout")
[ "$code" = 200 ] || fail "logout answered $code"
code=$(status -b "$OLD" "$BASE/api/version")
[ "$code" = 401 ] || fail "the old cookie still works after logout ($code)"
code=$(status "$BASE/api/nope")
[ "$code" = 404 ] || fail "unknown route answered $code"
echo "smoke: login → version → thread → logout → old cookie refused: ok"
if [ -n "$LLAMA_URL" ]; then
  body=$(curl -sf "$LLAMA_URL/models") || fail "the local model server at $LLAMA_URL does not answer"
  echo "$body" | grep -q '"id":"SmolLM2-135M-Instruct"' || fail "$LLAMA_URL/models: $body"
  echo "smoke: local model server lists SmolLM2-135M-Instruct: ok"
fi
