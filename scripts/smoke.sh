#!/usr/bin/env bash
# The README's promise, checked with curl against a running system (scripts/run.sh):
# log in as the demo user, read /api/version with the cookie, log out, be refused with the old cookie.
# Usage: scripts/smoke.sh BASE_URL USERNAME PASSWORD
set -euo pipefail
BASE="$1" USER_NAME="$2" PASSWORD="$3"
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
body=$(curl -sf -b "$JAR" "$BASE/api/threads") || fail "listing threads failed"
echo "$body" | grep -q '"totalCount"' || fail "thread list body: $body"
code=$(status -b "$JAR" -c "$JAR" -X POST "$BASE/api/logout")
[ "$code" = 200 ] || fail "logout answered $code"
code=$(status -b "$OLD" "$BASE/api/version")
[ "$code" = 401 ] || fail "the old cookie still works after logout ($code)"
code=$(status "$BASE/api/nope")
[ "$code" = 404 ] || fail "unknown route answered $code"
echo "smoke: login → version → thread → logout → old cookie refused: ok"
