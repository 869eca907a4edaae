#!/usr/bin/env bash
# Soak: cloakroom (release build) under steady mixed load for SOAK_MINUTES (default 10),
# then it stops itself. Two upstream servers (bench/soak_app.py: HTTP/1.1 keep-alive
# and a WebSocket echo on one port), and at the same time:
#   - about RATE (2,000) req/s of sessions being created, used and logged out
#     (wrk, bench/soak.lua: login, 20 uses, logout, per wrk thread; paced by a delay per
#     connection, so the rate is approximate and the table shows the one measured);
#   - WS (200) WebSockets each exchanging a message every second (bench/soak_ws.py);
#   - a SIGHUP every 30 s;
#   - one upstream server restarted every 2 minutes (the two take turns).
# Per minute: RSS and open file descriptors of the proxy, the HTTP rate, p50/p99
# latency (wrk, service time of each request), and every failed request or WebSocket
# with its reason. At the end: RSS at minute 1 and at the end, fds before and after.
#
# Usage: bench/soak.sh                      # 10 minutes after the build
#        SOAK_MINUTES=1 bench/soak.sh       # a short check
# Env:   SOAK_MINUTES (10) RATE (2000) CONNS (80) WS (200) CLOAKROOM_BIN (skip the build)
# Needs cargo, openssl, python3 with the `websockets` package, wrk (apt-get installs
# wrk when missing). Only 127.0.0.1, free ports picked by the kernel, everything in a
# temp dir; every process it starts is stopped on exit.
# Output: bench/results/soak.md (the table) and bench/results/soak-raw.txt (wrk and
# WebSocket output per minute, the proxy's warnings).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH=$ROOT/bench
MINUTES=${SOAK_MINUTES:-10}
RATE=${RATE:-2000}
CONNS=${CONNS:-80}
WS=${WS:-200}
RESULTS=$BENCH/results/soak.md
RAW=$BENCH/results/soak-raw.txt
LOG_NAME=soak
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/cloakroom-soak.XXXXXX")"
PIDS=()
# Upstream apps restarted by the events loop (a subshell) are listed in $TMP/app-pids.
soak_cleanup() {
  local pid
  if [ -f "$TMP/app-pids" ]; then
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$TMP/app-pids"
  fi
  cleanup
}
trap soak_cleanup EXIT
trap 'exit 130' INT TERM

# --- tools and build ----------------------------------------------------------------------
command -v wrk >/dev/null || {
  log "installing wrk with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
PYTHON=""
for candidate in python3 /usr/bin/python3; do
  if "$candidate" -c 'import websockets' 2>/dev/null; then PYTHON=$candidate; break; fi
done
[ -n "$PYTHON" ] || die "python3 with the websockets package is required (apt-get install python3-websockets)"
if [ -n "${CLOAKROOM_BIN:-}" ]; then
  BIN=$CLOAKROOM_BIN
else
  log "building cloakroom (release)"
  (cd "$ROOT" && cargo build --release --locked --quiet) || die "build failed"
  BIN=$ROOT/target/release/cloakroom
fi
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP1=$(free_port) UP2=$(free_port) PORT=$(free_port) ADMIN=$(free_port)

# --- upstreams and proxy --------------------------------------------------------------------
declare -A APP_PID
start_app() {
  "$PYTHON" "$BENCH/soak_app.py" "$1" >>"$TMP/app-$1.log" 2>&1 &
  APP_PID[$1]=$!
  PIDS+=("$!")
  wait_port "$1" "$!" || die "upstream app on $1 did not start"
}
start_app "$UP1"
start_app "$UP2"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat >"$TMP/proxy.toml" <<EOF
[listen]
https = "127.0.0.1:$PORT"
admin = "127.0.0.1:$ADMIN"

[tls]
cert = "$TMP/cert.pem"
key  = "$TMP/key.pem"

[log]
access = false   # 2,000 lines a second for minutes; warnings and errors are kept

[upstreams.app]
servers  = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
affinity = "sticky"

[[routes]]
path     = "/"
upstream = "app"
EOF
"$BIN" check -c "$TMP/proxy.toml" >"$TMP/check.out" 2>&1 || { cat "$TMP/check.out" >&2; die "cloakroom check failed"; }
"$BIN" -c "$TMP/proxy.toml" >"$TMP/cloakroom.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_port "$PORT" "$PROXY_PID" || { cat "$TMP/cloakroom.log" >&2; die "cloakroom did not start"; }
curl -sk --max-time 5 --fail -o /dev/null "https://127.0.0.1:$PORT/" || die "cloakroom does not answer"

fds() { find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY_PID/status"; }
FDS_BEFORE=$(fds)
RSS_BEFORE=$(rss_mb)
log "cloakroom $COMMIT on $PORT (pid $PROXY_PID), upstreams $UP1 $UP2; $MINUTES minute(s), $RATE req/s, $WS WebSockets"

# --- background load: WebSockets, SIGHUPs, upstream restarts -----------------------------------
SECONDS_TOTAL=$((MINUTES * 60))
"$PYTHON" "$BENCH/soak_ws.py" "wss://127.0.0.1:$PORT/ws" "$WS" "$SECONDS_TOTAL" "$TMP/ws.out" \
  >"$TMP/ws.log" 2>&1 &
WS_PID=$!
PIDS+=("$WS_PID")

START=$(date +%s)
events() {
  local t=0 turn=0 port
  while [ "$t" -lt "$SECONDS_TOTAL" ]; do
    sleep 30
    t=$((t + 30))
    kill -HUP "$PROXY_PID" 2>/dev/null && echo "$t sighup" >>"$TMP/events"
    if [ $((t % 120)) -eq 0 ] && [ "$t" -lt "$SECONDS_TOTAL" ]; then
      if [ $((turn % 2)) -eq 0 ]; then port=$UP1; else port=$UP2; fi
      turn=$((turn + 1))
      kill -TERM "${APP_PID[$port]}" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "${APP_PID[$port]}" 2>/dev/null || break; sleep 0.1; done
      "$PYTHON" "$BENCH/soak_app.py" "$port" >>"$TMP/app-$port.log" 2>&1 &
      APP_PID[$port]=$!
      echo "$t restarted upstream $port (pid $!)" >>"$TMP/events"
      echo "$!" >>"$TMP/app-pids"
    fi
  done
}
events &
EVENTS_PID=$!
PIDS+=("$EVENTS_PID")

# --- the minutes ------------------------------------------------------------------------------
# A first guess of the latency (2 ms); corrected after every minute.
DELAY_MS=$((CONNS * 1000 / RATE - 2))
ROWS=()
FAILED=0
RSS_FIRST=""
: >"$RAW.tmp"
for minute in $(seq "$MINUTES"); do
  out=$TMP/wrk-$minute.out
  SOAK_DELAY_MS=$DELAY_MS timeout 90 wrk -t2 -c"$CONNS" -d60s --timeout 10s \
    -s "$BENCH/soak.lua" "https://127.0.0.1:$PORT/" >"$out" 2>&1 || true
  rss=$(rss_mb)
  fd=$(fds)
  [ -n "$RSS_FIRST" ] || RSS_FIRST=$rss
  line=$(grep '^SOAK ' "$out" || echo "SOAK requests=0 duration_us=1 p50_us=0 p99_us=0 connect=0 read=0 write=0 timeout=0")
  read -r reqs dur p50 p99 e_connect e_read e_write e_timeout < <(sed 's/^SOAK //; s/[a-z0-9_]*=//g' <<<"$line")
  http_fails=$(awk '/^FAIL / { n += $2 } END { print n + 0 }' "$out")
  socket_fails=$((e_connect + e_read + e_write + e_timeout))
  reasons=$(awk '/^FAIL / { $1 = ""; print }' "$out" | sed 's/^ //' | paste -sd ';' -)
  [ "$socket_fails" -gt 0 ] && reasons="${reasons:+$reasons; }sockets: connect $e_connect, read $e_read, write $e_write, timeout $e_timeout"
  FAILED=$((FAILED + http_fails + socket_fails))
  rate=$(awk -v n="$reqs" -v d="$dur" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  ROWS+=("| $minute | $rss | $fd | $rate | $(awk -v v="$p50" 'BEGIN { printf "%.2f", v / 1000 }') | $(awk -v v="$p99" 'BEGIN { printf "%.2f", v / 1000 }') | $((http_fails + socket_fails)) | ${reasons:--} |")
  # Pacing: each connection spends delay + latency per request; aim the next minute at RATE.
  if [ "$reqs" -gt 0 ]; then
    DELAY_MS=$(awk -v c="$CONNS" -v r="$RATE" -v m="$rate" -v d="$DELAY_MS" \
      'BEGIN { l = c * 1000 / m - d; n = c * 1000 / r - l; printf "%d", (n < 1 ? 1 : n + 0.5) }')
  fi
  log "minute $minute: rss ${rss} MB, fds $fd, $rate req/s, p50 ${p50} µs, p99 ${p99} µs, failed $((http_fails + socket_fails))"
  { echo "== minute $minute (wrk)"; cat "$out"; } >>"$RAW.tmp"
done

# --- the end: WebSockets finish by themselves; then the proxy at rest ---------------------------------
for _ in $(seq 60); do kill -0 "$WS_PID" 2>/dev/null || break; sleep 1; done
stop_pid "$WS_PID"
stop_pid "$EVENTS_PID"
sleep 2
FDS_AFTER=$(fds)
RSS_END=$(rss_mb)
ws_fail_lines=$(grep -c ' fail ' "$TMP/ws.out" 2>/dev/null || true)
ws_echoes=$(awk '$2 == "ok" { n += $3 } END { print n + 0 }' "$TMP/ws.out" 2>/dev/null || echo 0)
metrics=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" || true)
log_dropped=$(awk '/^cloakroom_log_dropped_total / { print $2 }' <<<"$metrics")

{
  echo "# Soak ($MINUTES minute(s))"
  echo
  echo "cloakroom $COMMIT (release), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)."
  echo "Load: wrk -t2 -c$CONNS paced at about $RATE req/s (login, 20 uses, logout per session),"
  echo "$WS WebSockets with one message a second each, SIGHUP every 30 s, one upstream server"
  echo "restarted every 2 minutes. Latency: wrk's per-request service time."
  echo
  echo "| minute | RSS MB | fds | req/s | p50 ms | p99 ms | failed | reasons | WebSocket failures |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for i in "${!ROWS[@]}"; do
    echo "${ROWS[$i]} $(awk -v m="$i" '$2 == "fail" && int($1 / 60) == m { n++ } END { print n + 0 }' "$TMP/ws.out" 2>/dev/null || echo ?) |"
  done
  echo
  echo "- RSS: ${RSS_BEFORE} MB at start, ${RSS_FIRST} MB after minute 1, ${RSS_END} MB at the end."
  echo "- Open fds: ${FDS_BEFORE} before the load, ${FDS_AFTER} after it (2 s after the last client;"
  echo "  pooled upstream connections stay open for timeouts.upstream_idle)."
  echo "- HTTP requests failed: $FAILED."
  echo "- WebSockets: $ws_echoes echoes; $ws_fail_lines failures or closes:"
  if [ "$ws_fail_lines" -gt 0 ]; then
    echo
    echo '  | count | reason |'
    echo '  | --- | --- |'
    grep ' fail ' "$TMP/ws.out" | cut -d' ' -f3- | sort | uniq -c | sort -rn | head -20 |
      awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "  | %d | %s |\n", n, $0 }'
  fi
  echo "- Events: $(grep -c sighup "$TMP/events" 2>/dev/null || true) SIGHUPs, $(grep -c restarted "$TMP/events" 2>/dev/null || true) upstream restarts."
  echo "- cloakroom_log_dropped_total at the end: ${log_dropped:-?}."
} >"$RESULTS"
{
  cat "$RAW.tmp"
  echo "== events"; cat "$TMP/events" 2>/dev/null || true
  echo "== websocket failures (second, reason)"; grep ' fail ' "$TMP/ws.out" 2>/dev/null || true
  echo "== cloakroom warnings and errors (repeats counted)"
  grep -E 'WARN|ERROR' "$TMP/cloakroom.log" | sed -E 's/^[0-9T:.-]+Z +//' | sort | uniq -c | sort -rn | head -40 || true
} >"$RAW"
rm -f "$RAW.tmp"
cat "$RESULTS"
