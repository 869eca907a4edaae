#!/usr/bin/env bash
# Failover under load: cloakroom (release build, sticky sessions, no access log) in front
# of two single-process nginx upstreams; 50 sessions are made first (round robin pins
# half to each server), then `wrk -t2 -c50 -d20s` sends GETs rotating through those
# session cookies, and at t=5s the upstream that served the first session is killed
# with SIGKILL. Reports wrk's total requests, non-2xx/3xx responses and socket errors.
# Target: 0 failed GETs (a dead server's sessions move to the other one).
#
# Only 127.0.0.1, ports picked free by the kernel, everything in a temp dir, every
# process it starts stopped on exit. About 30 s after the build.
#
# Usage: bench/failover.sh            (needs cargo, openssl, curl, python3; installs
#                                      nginx and wrk with apt-get when missing)
# Env:   DURATION=20 KILL_AT=5 SESSIONS=50 CONNECTIONS=50 THREADS=2
# Output: the summary on stdout and in bench/results/failover.md; exit 1 if a GET failed.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
KILL_AT="${KILL_AT:-5}"
SESSIONS="${SESSIONS:-50}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-2}"
RESULTS="$ROOT/bench/results/failover.md"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/cloakroom-failover.XXXXXX")"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[failover] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# --- tools ------------------------------------------------------------------------------
for tool in cargo openssl curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# --- build ------------------------------------------------------------------------------
log "building cloakroom (release)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin cloakroom
BIN="$ROOT/target/release/cloakroom"
[ -x "$BIN" ] || die "no binary at $BIN"

# --- ports, certificate -----------------------------------------------------------------
read -r PORT UP1 UP2 < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 1 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

# --- upstreams: one nginx process each (no master), so SIGKILL takes all its sockets ----
start_upstream() { # NAME PORT; sets STARTED_PID (a child of this shell, so it is reaped)
    local name="$1" port="$2"
    mkdir -p "$TMP/$name"
    cat >"$TMP/$name/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/$name/body;
    proxy_temp_path $TMP/$name/proxy;
    fastcgi_temp_path $TMP/$name/fastcgi;
    uwsgi_temp_path $TMP/$name/uwsgi;
    scgi_temp_path $TMP/$name/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type text/plain;
            return 200 "$name\n";
        }
    }
}
EOF
    "$NGINX" -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$TMP/$name/nginx.conf" \
        >"$TMP/$name/stdout.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

wait_for() { # WHAT COMMAND...
    local what="$1"
    shift
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what did not come up"
}

start_upstream up1 "$UP1"
UP1_PID="$STARTED_PID"
start_upstream up2 "$UP2"
UP2_PID="$STARTED_PID"
wait_for "upstream up1" curl -sf "http://127.0.0.1:$UP1/"
wait_for "upstream up2" curl -sf "http://127.0.0.1:$UP2/"

# --- the proxy --------------------------------------------------------------------------
cat >"$TMP/proxy.toml" <<EOF
[listen]
https = "127.0.0.1:$PORT"

[tls]
cert = "$TMP/cert.pem"
key  = "$TMP/key.pem"

[log]
access = false

[upstreams.app]
servers  = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
balance  = "round_robin"
affinity = "sticky"

[[routes]]
path     = "/"
upstream = "app"
EOF
"$BIN" check --config "$TMP/proxy.toml" >/dev/null || die "the generated proxy.toml is invalid"
"$BIN" --config "$TMP/proxy.toml" >"$TMP/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
URL="https://127.0.0.1:$PORT/"
wait_for "cloakroom" curl -skf "$URL"

# --- sessions ---------------------------------------------------------------------------
# One new session per request: round robin pins them alternately to up1 and up2.
COOKIES=()
SERVED=()
for i in $(seq 1 "$SESSIONS"); do
    body="$(curl -sk --max-time 10 -D "$TMP/headers" "$URL")"
    cookie="$(tr -d '\r' <"$TMP/headers" | sed -n 's/^[Ss]et-[Cc]ookie: \(__Host-cloakroom=[^;]*\).*/\1/p' | head -n1)"
    [ -n "$cookie" ] || die "request $i got no session cookie"
    COOKIES+=("$cookie")
    SERVED+=("$body")
done
VICTIM="${SERVED[0]}"
case "$VICTIM" in
    up1) VICTIM_PID="$UP1_PID"; SURVIVOR=up2 ;;
    up2) VICTIM_PID="$UP2_PID"; SURVIVOR=up1 ;;
    *) die "unexpected first answer: $VICTIM" ;;
esac
ON_VICTIM=0
for s in "${SERVED[@]}"; do
    if [ "$s" = "$VICTIM" ]; then ON_VICTIM=$((ON_VICTIM + 1)); fi
done
# Check stickiness before the run: the first session comes back to its server.
again="$(curl -sk --max-time 10 -H "Cookie: ${COOKIES[0]}" "$URL")"
[ "$again" = "$VICTIM" ] || die "session 1 is not sticky ($VICTIM, then $again)"
log "$SESSIONS sessions, $ON_VICTIM pinned to $VICTIM (pid $VICTIM_PID), which dies at t=${KILL_AT}s"

# --- load -------------------------------------------------------------------------------
{
    echo "local cookies = {"
    for c in "${COOKIES[@]}"; do printf '  "%s",\n' "$c"; done
    echo "}"
    cat <<'EOF'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["Cookie"] = cookies[(n % #cookies) + 1] })
end
-- errors.status counts responses with a status >= 400 (1xx never comes to a GET).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "FAILOVER requests=%d duration_us=%d status_errors=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
EOF
} >"$TMP/failover.lua"

(
    sleep "$KILL_AT"
    kill -KILL "$VICTIM_PID" 2>/dev/null && echo "killed $VICTIM at t=${KILL_AT}s" >"$TMP/killed"
) &
PIDS+=("$!")

log "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
timeout $((DURATION + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
    -s "$TMP/failover.lua" "$URL" >"$TMP/wrk.out" 2>&1 || die "wrk failed: $(cat "$TMP/wrk.out")"
[ -s "$TMP/killed" ] || die "the upstream was not killed during the run"

line="$(grep '^FAILOVER ' "$TMP/wrk.out")" || die "no summary from wrk: $(cat "$TMP/wrk.out")"
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<" ${line#FAILOVER }"; }
REQUESTS="$(field requests)"
DURATION_US="$(field duration_us)"
STATUS_ERRORS="$(field status_errors)"
CONNECT="$(field connect)"
READ="$(field read)"
WRITE="$(field write)"
TIMEOUT="$(field timeout)"
P50="$(field p50_us)"
P99="$(field p99_us)"
MAX="$(field max_us)"
SOCKET_ERRORS=$((CONNECT + READ + WRITE + TIMEOUT))
FAILED=$((STATUS_ERRORS + SOCKET_ERRORS))
RPS="$(python3 -c "print(round($REQUESTS / ($DURATION_US / 1e6)))")"

# After the run: the first session (pinned to the dead server) is served by the survivor.
after="$(curl -sk --max-time 10 -H "Cookie: ${COOKIES[0]}" "$URL" || true)"
kill -0 "$PROXY_PID" 2>/dev/null || die "cloakroom died during the run"
MARKED_DOWN="$(grep -c 'server marked down' "$TMP/proxy.log" || true)"
REPINNED="$(grep -c 'session re-pinned' "$TMP/proxy.log" || true)"

if [ "$FAILED" -eq 0 ] && [ "$after" = "$SURVIVOR" ]; then VERDICT=PASS; else VERDICT=FAIL; fi

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then COMMIT="$COMMIT (+ uncommitted changes)"; fi
mkdir -p "$(dirname "$RESULTS")"
cat >"$RESULTS" <<EOF
# Failover under load

\`bench/failover.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), commit $COMMIT, $(nproc) CPUs.

cloakroom (release, \`affinity = "sticky"\`, \`balance = "round_robin"\`, memory store,
no access log) in front of two single-process nginx upstreams on 127.0.0.1.
$SESSIONS sessions made first ($ON_VICTIM pinned to the victim); \`wrk -t$THREADS
-c$CONNECTIONS -d${DURATION}s\` GETs rotating through their cookies; the upstream
serving session 1 killed with SIGKILL at t=${KILL_AT}s.

| measure | value |
| --- | --- |
| requests | $REQUESTS |
| requests/s | $RPS |
| non-2xx/3xx responses | $STATUS_ERRORS |
| socket errors (connect/read/write/timeout) | $SOCKET_ERRORS ($CONNECT/$READ/$WRITE/$TIMEOUT) |
| latency p50 / p99 / max | ${P50} µs / ${P99} µs / ${MAX} µs |
| session 1 after the run served by | ${after:-nothing} (expected $SURVIVOR) |
| "server marked down" log lines | $MARKED_DOWN |
| "session re-pinned" log lines | $REPINNED ($ON_VICTIM sessions moved; concurrent requests of one session each re-pin) |

**$VERDICT**: target 0 failed GETs, measured $FAILED.
EOF

cat "$RESULTS"
[ "$VERDICT" = PASS ]
