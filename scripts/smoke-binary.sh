#!/usr/bin/env bash
# Smoke-test the single-file binary built by scripts/build-binary.sh, as a user would run it:
#
#   1. `dist/kallm --version` and `dist/kallm serve --help` work (CLI and rich help bundled);
#   2. `dist/kallm serve` on a free loopback port, against the test-suite's fake upstream
#      (python -m tests.fake_upstream), answers GET /health; the time from launch to that
#      first answer is measured; the Dockerfile's HEALTHCHECK command passes against it;
#   3. a chat completion sent twice: the first is a MISS, the second `X-Kallm-Cache: HIT`;
#      a third asking the opposite question is answered (200) and is not a HIT;
#   4. /stats names the bundled local embedder (not the hash fallback used when the
#      embedding table is missing from the bundle); /metrics, if served, has kallm_ series;
#   5. SIGTERM: kallm exits with status 0 and has written its cache snapshot (and its
#      SQLite database: keys, spend, request log).
#
#   scripts/smoke-binary.sh [path/to/kallm]      (default: dist/kallm)
#
# Needs curl, and PYTHON (default python3) able to import this checkout's tests package.
# Every process it starts is stopped by PID on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BINARY="$(realpath "${1:-$ROOT/dist/kallm}")"
cd "$ROOT"

fail() { echo "smoke-binary: FAIL: $*" >&2; exit 1; }
now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }

[[ -x "$BINARY" ]] || fail "$BINARY not found or not executable (run scripts/build-binary.sh)"
command -v curl >/dev/null || fail "curl is needed (apt-get install curl)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kallm-smoke.XXXXXX")"
UPSTREAM_PID=""
KALLM_PID=""
cleanup() {
    local status=$?
    for pid in "$KALLM_PID" "$UPSTREAM_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ $status -ne 0 && -s "$WORK/kallm.log" ]]; then
        echo "---- kallm log (last 40 lines) ----" >&2
        tail -n 40 "$WORK/kallm.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The CLI itself.
version="$("$BINARY" --version)" || fail "--version exited non-zero"
[[ "$version" == kallm\ * ]] || fail "--version printed '$version'"
echo "smoke-binary: $version"
"$BINARY" serve --help >"$WORK/help.txt" 2>&1 || fail "serve --help exited non-zero"
grep -q -- "--cache-file" "$WORK/help.txt" || fail "serve --help does not list --cache-file"

# 2. A fake upstream (prints its base URL on its first line), then kallm in front of it.
"$PYTHON" -m tests.fake_upstream --host 127.0.0.1 --port 0 >"$WORK/upstream.out" 2>&1 &
UPSTREAM_PID=$!
upstream_url=""
for _ in $(seq 200); do
    upstream_url="$(head -n 1 "$WORK/upstream.out" 2>/dev/null || true)"
    [[ "$upstream_url" == http* ]] && break
    kill -0 "$UPSTREAM_PID" 2>/dev/null || fail "fake upstream exited: $(cat "$WORK/upstream.out")"
    sleep 0.05
done
[[ "$upstream_url" == http* ]] || fail "fake upstream printed no URL"

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
cache_file="$WORK/data/cache.kallm"
db_file="$WORK/data/kallm.db"
mkdir -p "$WORK/data" "$WORK/xdg-config" "$WORK/xdg-data"

launched=$(now)
env KALLM_HOST=127.0.0.1 KALLM_PORT="$port" OPENAI_BASE_URL="$upstream_url" \
    OPENAI_API_KEY=sk-smoke KALLM_CACHE_FILE="$cache_file" KALLM_DB="$db_file" KALLM_LOG_JSON=true \
    XDG_CONFIG_HOME="$WORK/xdg-config" XDG_DATA_HOME="$WORK/xdg-data" \
    "$BINARY" serve >"$WORK/kallm.log" 2>&1 &
KALLM_PID=$!

health_status=000
deadline=$(( $(now) + 60 * 1000000000 ))
while (( $(now) < deadline )); do
    kill -0 "$KALLM_PID" 2>/dev/null || fail "kallm exited before answering /health"
    # 000: nothing listening yet. kallm listens only once it is ready, so any other
    # status is its answer, and anything but 200 is a failure.
    health_status="$(curl -s --max-time 1 -o "$WORK/health.json" -w '%{http_code}' \
        "$base/health" 2>/dev/null || true)"
    [[ "$health_status" == 000 ]] || break
    sleep 0.02
done
first_answer_ms=$(ms_since "$launched")
[[ "$health_status" != 000 ]] || fail "no answer on $base/health within 60 s"
health="$(cat "$WORK/health.json")"
[[ "$health_status" == 200 ]] || fail "/health answered HTTP $health_status: $health"
[[ "$health" == *'"status": "ok"'* || "$health" == *'"status":"ok"'* ]] \
    || fail "/health answered $health"

# The Dockerfile's HEALTHCHECK command (python + urllib, no curl in the slim image) passes.
healthcheck_code="$("$PYTHON" - "$ROOT/Dockerfile" <<'PY'
import json, re, sys
text = re.sub(r"\\\n", " ", open(sys.argv[1]).read())
line = next(l for l in text.splitlines() if l.strip().startswith("HEALTHCHECK"))
argv = json.loads(line.split(" CMD ", 1)[1])
assert argv[:2] == ["python", "-c"], argv
print(argv[2])
PY
)" || fail "cannot read the HEALTHCHECK command from the Dockerfile"
KALLM_PORT="$port" "$PYTHON" -c "$healthcheck_code" \
    || fail "the Dockerfile's HEALTHCHECK command failed against kallm"

# 3. The same chat completion twice, then its opposite.
chat() {  # chat NAME CONTENT -> writes $WORK/NAME.headers and $WORK/NAME.body, echoes status
    curl -sS --max-time 30 -o "$WORK/$1.body" -D "$WORK/$1.headers" -w '%{http_code}' \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-smoke' \
        --data "{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"$2\"}]}" \
        "$base/v1/chat/completions"
}
cache_header() { tr -d '\r' <"$WORK/$1.headers" | awk -F': *' 'tolower($1) == "x-kallm-cache" {print $2}'; }

question="How do I lock the front door of my house?"
status="$(chat first "$question")"
[[ "$status" == 200 ]] || fail "first chat completion: HTTP $status: $(cat "$WORK/first.body")"
[[ "$(cache_header first)" == MISS ]] || fail "first chat completion: X-Kallm-Cache '$(cache_header first)', expected MISS"
grep -q '"choices"' "$WORK/first.body" || fail "first chat completion has no choices: $(cat "$WORK/first.body")"

status="$(chat second "$question")"
[[ "$status" == 200 ]] || fail "second chat completion: HTTP $status: $(cat "$WORK/second.body")"
[[ "$(cache_header second)" == HIT ]] || fail "second chat completion: X-Kallm-Cache '$(cache_header second)', expected HIT"

status="$(chat opposite "How do I unlock the front door of my house?")"
[[ "$status" == 200 ]] || fail "opposite question: HTTP $status: $(cat "$WORK/opposite.body")"
[[ "$(cache_header opposite)" != HIT ]] || fail "opposite question was served from the cache"

# 4. The bundled embedding table is in use.
stats="$(curl -sf --max-time 5 "$base/stats")" || fail "GET /stats failed"
embedder="$(printf '%s' "$stats" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin).get("embedder"))')"
[[ "$embedder" == local* ]] || fail "embedder is '$embedder', expected the bundled local table"

# Prometheus metrics (what the chart's ServiceMonitor scrapes), where this kallm has them.
metrics_status="$(curl -sS --max-time 5 -o "$WORK/metrics.txt" -w '%{http_code}' "$base/metrics")" \
    || fail "GET /metrics failed"
case "$metrics_status" in
    200) grep -q '^kallm_' "$WORK/metrics.txt" || fail "/metrics has no kallm_ series"
         metrics_note="/metrics: $(grep -c '^kallm_' "$WORK/metrics.txt") kallm_ samples" ;;
    404) metrics_note="/metrics: not served by this version" ;;
    *) fail "GET /metrics: HTTP $metrics_status" ;;
esac

# 5. SIGTERM: drain, snapshot, exit 0.
kill -TERM "$KALLM_PID"
stopped=$(now)
for _ in $(seq 450); do kill -0 "$KALLM_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$KALLM_PID" 2>/dev/null && fail "kallm still running 45 s after SIGTERM"
rc=0
wait "$KALLM_PID" || rc=$?
KALLM_PID=""
stop_ms=$(ms_since "$stopped")
[[ $rc -eq 0 ]] || fail "kallm exited with status $rc after SIGTERM"
[[ -s "$cache_file" ]] || fail "no cache snapshot at $cache_file after SIGTERM"
[[ -s "$db_file" ]] || fail "no SQLite database at $db_file (is sqlite3 in the bundle?)"

size=$(stat -c %s "$BINARY")
awk -v s="$size" -v p="$BINARY" 'BEGIN { printf "smoke-binary: binary %s: %.1f MB (%d bytes)\n", p, s / 1048576, s }'
echo "smoke-binary: launch to first answered /health: ${first_answer_ms} ms"
echo "smoke-binary: embedder $embedder; MISS then HIT; opposite question not a HIT; $metrics_note"
echo "smoke-binary: SIGTERM -> exit 0 in ${stop_ms} ms, snapshot $(stat -c %s "$cache_file") bytes, database $(stat -c %s "$db_file") bytes"
echo "smoke-binary: OK"
