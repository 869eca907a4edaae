#!/usr/bin/env bash
# Whole-proxy comparison: cloakroom against HAProxy and nginx doing the same job.
#
# Job: TLS termination, HTTP/1.1 keep-alive to the client, pooled keep-alive connections
# to two upstream servers, sticky affinity decided from a cookie the client sends on
# every request, no access log. The upstream is one shared nginx instance (one worker)
# answering a fixed 100-byte body on two ports.
#
# The figure that matters is CPU per request: utime+stime of every process of the proxy
# (from /proc/PID/stat) over the wrk run, divided by the requests wrk completed. Speed is
# compared as ratios within one run on one machine; absolute numbers mean little.
#
# Only 127.0.0.1, bounded in time (about 100 s of load plus the build), cleans up every
# process it started. Writes bench/results/latest.md.
#
#   bench/compare.sh                 # everything
#   DURATION=5 bench/compare.sh      # shorter runs (seconds)
#   ALL_CORES_ROW=0 bench/compare.sh  # skip the cloakroom row with one worker per core
# The session cookie is fetched without a User-Agent, like wrk sends its requests:
# with the default session.anomaly = "flag" a cookie used by another client family is
# flagged and logged on every request, which is not the job being measured.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench

DURATION=${DURATION:-15}   # seconds of measured load per target
WARMUP=${WARMUP:-2}        # seconds of unmeasured load first
CONNECTIONS=${CONNECTIONS:-32}
UP1=19401                  # upstream servers
UP2=19402
PORT_CLOAKROOM=19411
PORT_HAPROXY=19412
PORT_NGINX=19413

log() { printf 'compare [%3ss]: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -------------------------------------------------------------------------
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin   # haproxy and nginx live in sbin

# --- processes we start, and their cleanup -------------------------------------------
TMP=$(mktemp -d /tmp/cloakroom-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers may run as nobody
PIDS=()

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "pid $pid ignored SIGTERM for 5 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 pid=$2 i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Fills in the @...@ placeholders of a template.
render() {
  sed -e "s|@TMP@|$TMP|g" -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@PORT@|$2|g" "$1"
}

# CPU ticks (utime+stime) of a process and its direct children (nginx workers).
cpu_ticks() {
  local pids total=0 pid fields
  pids="$1 $(pgrep -P "$1" 2>/dev/null | tr '\n' ' ')"
  for pid in $pids; do
    # Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
    fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
  done
  echo "$total"
}

for port in $UP1 $UP2 $PORT_CLOAKROOM $PORT_HAPROXY $PORT_NGINX; do
  port_free "$port" || die "port $port is in use"
done

# --- build, certificate, upstream ------------------------------------------------------
log "cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/cloakroom

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"

render "$BENCH/upstream.nginx.conf" 0 >"$TMP/upstream.conf"
nginx -e "$TMP/upstream-error.log" -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' \
  >"$TMP/upstream.out" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_port "$UP1" "$UPSTREAM_PID" && wait_port "$UP2" "$UPSTREAM_PID" ||
  { cat "$TMP/upstream.out" "$TMP/upstream-error.log" >&2 || true; die "upstream did not start"; }

# --- one load run ------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# run_wrk URL PID [COOKIE] -> sets REQS RPS P99_US ERRS CPU_US UP_CPU_US
run_wrk() {
  local url=$1 pid=$2 cookie=${3:-} before after up_before up_after out line
  local headers=()
  [ -n "$cookie" ] && headers=(-H "Cookie: $cookie")
  timeout $((WARMUP + 10)) wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${headers[@]}" "$url" >/dev/null
  before=$(cpu_ticks "$pid")
  up_before=$(cpu_ticks "$UPSTREAM_PID")
  out=$(timeout $((DURATION + 15)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
    -s "$BENCH/report.lua" "${headers[@]}" "$url")
  after=$(cpu_ticks "$pid")
  up_after=$(cpu_ticks "$UPSTREAM_PID")
  line=$(grep '^WRK ' <<<"$out") || die "no wrk summary for $url: $out"
  # shellcheck disable=SC2046
  eval $(sed 's/^WRK //' <<<"$line")   # requests= duration_us= p50_us= p99_us= ...
  REQS=$requests
  [ "$REQS" -gt 0 ] || die "wrk completed no request against $url"
  ERRS=$((status_errors + socket_errors))
  RPS=$(awk -v r="$REQS" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  P99_US=$p99_us
  CPU_US=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$REQS" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
  UP_CPU_US=$(awk -v t=$((up_after - up_before)) -v hz="$CLK_TCK" -v r="$REQS" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
}

# The cookie a client would send: the first Set-Cookie's name=value, or $2 if none.
learn_cookie() {
  local set
  set=$(curl -sk -H "User-Agent:" --max-time 5 -o /dev/null -D - "$1" | tr -d '\r' |
    awk 'tolower($1) == "set-cookie:" { print $2; exit }' | cut -d';' -f1)
  echo "${set:-$2}"
}

# Sends 20 requests with the cookie; all must answer 200 from one upstream port.
check_sticky() {
  local url=$1 cookie=$2 i body ports=""
  for i in $(seq 20); do
    body=$(curl -sk --max-time 5 --fail -H "Cookie: $cookie" "$url") ||
      die "$url answered an error with cookie"
    ports="$ports $(awk '{print $2}' <<<"$body")"
  done
  [ "$(tr ' ' '\n' <<<"$ports" | sed '/^$/d' | sort -u | wc -l)" -eq 1 ] ||
    die "$url is not sticky with its cookie (upstream ports:$ports)"
}

tls_of() {
  openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
    awk '/^New, / { print $2 " " $NF; exit }'
}

ROWS=()
declare -A CPU

# bench_proxy NAME PORT PID FALLBACK_COOKIE
bench_proxy() {
  local name=$1 port=$2 pid=$3 fallback=$4 url cookie tls
  url="https://127.0.0.1:$port/"
  cookie=$(learn_cookie "$url" "$fallback")
  check_sticky "$url" "$cookie"
  tls=$(tls_of "$port")
  log "$name: wrk ${DURATION}s, cookie ${cookie%%=*}, $tls"
  run_wrk "$url" "$pid" "$cookie"
  kill -0 "$pid" 2>/dev/null || die "$name died during the run"
  CPU[$name]=$CPU_US
  log "$name: done"
  ROWS+=("$name|$RPS|$(awk -v u="$P99_US" 'BEGIN { printf "%.2f", u / 1000 }')|$CPU_US|$UP_CPU_US|$ERRS|$REQS|$tls")
}

# --- the baseline: straight to the upstream ---------------------------------------------------
log "baseline: wrk ${DURATION}s straight to the upstream (plain HTTP)"
run_wrk "http://127.0.0.1:$UP1/" "$UPSTREAM_PID"
BASE_RPS=$RPS
ROWS+=("upstream direct (plain HTTP)|$RPS|$(awk -v u="$P99_US" 'BEGIN { printf "%.2f", u / 1000 }')|-|$UP_CPU_US|$ERRS|$REQS|-")

# --- cloakroom ---------------------------------------------------------------------------------
render "$BENCH/cloakroom.toml" "$PORT_CLOAKROOM" >"$TMP/cloakroom.toml"
"$BIN" check -c "$TMP/cloakroom.toml" >"$TMP/cloakroom-check.out" 2>&1 ||
  { cat "$TMP/cloakroom-check.out" >&2; die "cloakroom check failed"; }

# bench_cloakroom ROW_NAME WORKERS
bench_cloakroom() {
  local name=$1 workers=$2
  sed -E "s|^(https = .*)$|\\1\\nworkers = $workers|" "$TMP/cloakroom.toml" >"$TMP/cloakroom-$workers.toml"
  RUST_LOG=warn "$BIN" -c "$TMP/cloakroom-$workers.toml" >"$TMP/cloakroom.out" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$PORT_CLOAKROOM" "$pid" || { cat "$TMP/cloakroom.out" >&2; die "cloakroom did not start"; }
  bench_proxy "$name" "$PORT_CLOAKROOM" "$pid" ""
  stop_pid "$pid"
  if [ -s "$TMP/cloakroom.out" ]; then
    # Repeated lines once each, with their count (timestamps cut off).
    log "$name logged:"
    sed -E 's/^[0-9T:.-]+Z +//' "$TMP/cloakroom.out" | sort | uniq -c | sort -rn | head -10 >&2
  fi
}

# Like for like with the one-thread HAProxy and one-worker nginx: one worker thread.
# The ratios below use this row.
bench_cloakroom cloakroom 1
# For reference: the default, one worker (event loop) per core.
if [ "${ALL_CORES_ROW:-1}" = 1 ]; then
  bench_cloakroom "cloakroom (workers = $(nproc), the default)" 0
fi

# --- haproxy -----------------------------------------------------------------------------------
render "$BENCH/haproxy.cfg" "$PORT_HAPROXY" >"$TMP/haproxy.cfg"
haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy config check failed"
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.out" 2>&1 &
P=$!
PIDS+=("$P")
wait_port "$PORT_HAPROXY" "$P" || { cat "$TMP/haproxy.out" >&2; die "haproxy did not start"; }
bench_proxy haproxy "$PORT_HAPROXY" "$P" ""
stop_pid "$P"

# --- nginx -------------------------------------------------------------------------------------
render "$BENCH/nginx.conf" "$PORT_NGINX" >"$TMP/nginx.conf"
nginx -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf" -g 'daemon off;' \
  >"$TMP/nginx.out" 2>&1 &
P=$!
PIDS+=("$P")
wait_port "$PORT_NGINX" "$P" || { cat "$TMP/nginx.out" "$TMP/nginx-error.log" >&2 || true; die "nginx did not start"; }
# nginx sets no cookie: the client sends SRV=s1 and nginx hashes it.
bench_proxy nginx "$PORT_NGINX" "$P" "SRV=s1"
stop_pid "$P"

# --- report ----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
R_HAPROXY=$(ratio "${CPU[cloakroom]}" "${CPU[haproxy]}")
R_NGINX=$(ratio "${CPU[cloakroom]}" "${CPU[nginx]}")

REPORT=$TMP/latest.md
{
  echo "# cloakroom vs HAProxy vs nginx: CPU per proxied request"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), cloakroom $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)'),"
  echo "$(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'),"
  echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))."
  echo
  echo "Job: TLS termination (self-signed P-256), HTTP/1.1 keep-alive to the client, pooled"
  echo "keep-alive to 2 upstream servers (one shared nginx, 1 worker, 100-byte body), sticky"
  echo "affinity from a cookie sent on every request, X-Forwarded-For/-Proto/-Host set, no access log."
  echo "Client: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\` after a ${WARMUP}s warm-up, HTTPS, same machine."
  echo
  echo "- cloakroom: session route, \`affinity = \"sticky\"\`: cookie HMAC check, memory-store lookup,"
  echo "  identity strip + \`X-Session-Id\` injection on every request; \`workers = 1\` (one event-loop"
  echo "  thread, like the others), and a reference row with the default one worker per core."
  echo "- haproxy: \`nbthread 1\`, \`cookie SRV insert indirect nocache\`."
  echo "- nginx: \`worker_processes 1\`; nginx OSS has no sticky cookie, so \`hash \$cookie_SRV consistent\`."
  echo
  echo "CPU µs/req = utime+stime of all the proxy's processes during the run ÷ requests completed"
  echo "(ticks of 1/$CLK_TCK s). Upstream CPU µs/req is the shared upstream's, for reference."
  echo "Errors = responses >= 400 plus socket errors (wrk); must be 0."
  echo
  echo "| target | req/s | p99 ms | CPU µs/req | upstream CPU µs/req | errors | requests | TLS |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r n rps p99 cpu upcpu errs reqs tls <<<"$row"
    echo "| $n | $rps | $p99 | $cpu | $upcpu | $errs | $reqs | $tls |"
  done
  echo
  echo "cloakroom CPU per request ÷ haproxy: **$R_HAPROXY**, ÷ nginx: **$R_NGINX** (below 1 = cheaper)."
  echo "Straight to the upstream: $BASE_RPS req/s (plain HTTP, no proxy)."
} >"$REPORT"

mkdir -p "$BENCH/results"
cp "$REPORT" "$BENCH/results/latest.md"
cat "$REPORT"

errors=0
for row in "${ROWS[@]}"; do
  IFS='|' read -r n _ _ _ _ errs _ _ <<<"$row"
  [ "$errs" -eq 0 ] || { log "error: $n had $errs errors"; errors=1; }
done
exit "$errors"
