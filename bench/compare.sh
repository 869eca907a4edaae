#!/usr/bin/env bash
# The job_* functions are called by name ("job_$job"):
# shellcheck disable=SC2317
# Whole-proxy comparison: cloakroom against HAProxy 2.6 and nginx 1.22 doing the same job,
# side by side in one run, one row per job (GitHub issue 10).
#
# Job: TLS termination (self-signed P-256), pooled keep-alive connections to two upstream
# servers, sticky affinity from a cookie, X-Forwarded-* set (cloakroom also injects
# X-Session-Id), no access log, one thread each (cloakroom `workers = 1`, HAProxy
# `nbthread 1`, nginx `worker_processes 1`). The upstream is one shared nginx (one worker)
# answering a fixed 100-byte body on two ports. Each proxy is pinned to core 0; the
# clients (wrk, h2load, python3) and the upstream to core 1.
#
# Rows (figures: proxy CPU from /proc, utime+stime of all its processes; latency from the
# client; RSS from /proc/PID/status):
#   sticky     h1 keep-alive, sticky cookie on every request (wrk -c32)     CPU µs/req
#   newsess    h1 keep-alive, no cookie: a new session per request (wrk)   CPU µs/req
#   h2         h2, 10 connections x 5 streams, sticky cookie (h2load)       CPU µs/req
#   fixed      10,000 req/s over 50 h1 connections, sticky (h2load --rps)   p50, p99 ms
#   closed     closed loop, 50 connections, sticky (wrk -c50)              p99 ms
#   handshake  a new connection per request, full P-256 handshake (h2load  CPU µs/conn
#              -r: a new client per connection and no TLS session reuse; wrk would
#              resume sessions after "Connection: close", see below)
#   idle       10,000 idle TLS keep-alive connections (bench/idle_conns.py), RSS read   bytes/conn
#              after they were idle IDLE_SETTLE s
#              (fewer, said in the table, where the open-file hard limit is too low
#              for HAProxy's 2 descriptors per maxconn and cannot be raised)
#   session    1,000,000 anonymous sessions, cloakroom only (h2load)       bytes/session
#
# All-cores rows (issue 20: the setting users run), after the one-core rows: the jobs of
# ALL_JOBS again with every proxy on every core (cloakroom `workers = 0`, HAProxy
# `nbthread` = cores, nginx `worker_processes auto`), nothing pinned: proxy, clients and
# the upstream share the cores. Each row is named JOB_all; figures as above, plus
#   *_rps      requests/s at saturation (sticky, newsess, h2) or held at the fixed rate
#   scale      IDLE_CONNS idle TLS keep-alive connections held open while SCALE_ACTIVE
#              (1,000) connections run the sticky job closed-loop (wrk): scale_p99 (ms,
#              of the active load) and scale_rss (MB, the proxy's RSS at the end)
# Each row: median of REPS reps; a rep starts the proxy afresh, warms it up for WARMUP s,
# then measures for DURATION s. Errors (status >= 400, socket errors) must be 0 on every
# row: a row with errors is marked and the script exits 1 at the end.
#
# One command from a fresh clone (installs haproxy, nginx, wrk, h2load, python3, openssl
# and curl with apt-get when missing; builds cloakroom in release mode):
#   bench/compare.sh                  # every row: REPS=3 x DURATION=8 s, about 17 minutes
#   bench/compare.sh --quick          # 1 rep of 2 s, 1,000 idle conns, 100,000 sessions: ~1.5 min
#   REPS=1 DURATION=5 bench/compare.sh
#   JOBS="sticky h2" bench/compare.sh # some rows only
# Knobs (environment): REPS (3), DURATION (8 s), WARMUP (2 s), IDLE_CONNS (10000),
# SESSIONS (1000000), HS_RATE (1000 new connections/s in the handshake row), JOBS (all
# one-core rows), ALL_JOBS (sticky newsess h2 fixed scale: the all-cores rows; "" for
# none), SCALE_ACTIVE (1000), ALL_CORES_ROW (0: same as ALL_JOBS=""), PEERS (haproxy nginx
# cloakroom), IDLE_SETTLE (12 s: how long idle connections stay idle before RSS is read),
# BIN (a cloakroom binary to run instead of building target/release/cloakroom),
# RESULTS (bench/results: where latest.md and latest-raw.txt go).
# Writes bench/results/latest.md (the table, also printed) and latest-raw.txt (per rep).
# Only 127.0.0.1 (ports 19401-19414), every run bounded by `timeout`, and every process it
# started is stopped on exit.
#
# TLS session reuse: Debian's wrk 4.1 keeps one SSL object per connection slot and calls
# SSL_clear() when it reconnects, so the session stays set and the next handshake is a
# resumption (HAProxy's stats show 100 % reuse under wrk -H "Connection: close").
# h2load -r makes each connection a new client with a new SSL object and no session:
# HAProxy's stats show 0 % reuse, and compare.sh checks that on every handshake rep.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '/^# Whole-proxy/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  REPS=${REPS:-1} DURATION=${DURATION:-2} WARMUP=${WARMUP:-1}
  IDLE_CONNS=${IDLE_CONNS:-1000} SESSIONS=${SESSIONS:-100000} SCALE_ACTIVE=${SCALE_ACTIVE:-200}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
SESSIONS=${SESSIONS:-1000000}
HS_RATE=${HS_RATE:-1000}
SCALE_ACTIVE=${SCALE_ACTIVE:-1000}
RESULTS=${RESULTS:-$BENCH/results}
IDLE_SETTLE=${IDLE_SETTLE:-12}
JOBS=${JOBS-sticky newsess h2 fixed closed handshake idle session}
ALL_JOBS=${ALL_JOBS-sticky newsess h2 fixed scale}
[ "${ALL_CORES_ROW:-1}" = 0 ] && ALL_JOBS=""
# Row name suffix: "" for the one-core rows, "_all" for the all-cores ones.
ROW_SUFFIX=""
ONE_PIN_PROXY=0
ONE_PIN_CLIENT=1

UP1=19401 # upstream servers
UP2=19402
PORT_CLOAKROOM=19411
PORT_HAPROXY=19412
PORT_NGINX=19413
PORT_ADMIN=19414
PIN_PROXY=0
PIN_CLIENT=1
read -r -a PEERS <<<"${PEERS:-haproxy nginx cloakroom}"

export PATH=$PATH:/usr/sbin:/sbin # haproxy and nginx live in sbin
install_tools
raise_file_limit
CLK_TCK=$(getconf CLK_TCK)
H2LOAD_UA=$(h2load --version | awk '{ print "h2load nghttp2/" $NF; exit }')

TMP=$(mktemp -d /tmp/cloakroom-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as nobody
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in $UP1 $UP2 $PORT_CLOAKROOM $PORT_HAPROXY $PORT_NGINX $PORT_ADMIN; do
  port_free "$port" || die "port $port is in use"
done

if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=$ROOT/target/release/cloakroom
fi
make_certificate
start_upstream

# --- results: raw lines per rep, values per row and proxy ----------------------------------
RAW=$TMP/latest-raw.txt
declare -A VALS ERRORS BUSY
TLS_SEEN=""

# record ROW PROXY REP VALUE ERRS DETAILS... (ROW gets ROW_SUFFIX)
record() {
  local row=$1$ROW_SUFFIX proxy=$2 rep=$3 value=$4 errs=$5
  shift 5
  VALS[$row|$proxy]="${VALS[$row|$proxy]:-} $value"
  ERRORS[$row|$proxy]=$((${ERRORS[$row|$proxy]:-0} + errs))
  # Who kept the two cores busy, for the note under the table.
  if [[ "$*" =~ proxy_busy=([0-9]+)%\ upstream_busy=([0-9]+)%\ client_busy=([0-9]+)%\ core[0-9-]+=([0-9]+)%\ core[0-9-]+=([0-9]+)% ]]; then
    local m=("${BASH_REMATCH[@]}")
    BUSY[$row|$proxy]="${m[1]} of ${m[4]} · ${m[3]}+${m[2]} of ${m[5]}"
  fi
  printf '%-10s %-9s rep %s  %-10s errors=%s %s\n' "$row" "$proxy" "$rep" "$value" "$errs" "$*" >>"$RAW"
  log "$row $proxy rep $rep: $value (errors $errs; $*)"
}

# Sets URL and COOKIE for the proxy under test; the cookie is learned with the load
# client's User-Agent. nginx sets no cookie: the client sends SRV=s1 and nginx hashes it.
prepare() {
  local name=$1 ua=$2 fallback=""
  URL="https://127.0.0.1:$PROXY_PORT/"
  [ "$name" = nginx ] && fallback="SRV=s1"
  COOKIE=$(learn_cookie "$URL" "$ua" "$fallback")
  [ -n "$COOKIE" ] || die "$name set no cookie"
  check_sticky "$URL" "$COOKIE" "$ua"
  [ -n "$TLS_SEEN" ] || TLS_SEEN=$(tls_of "$PROXY_PORT")
}

# wrk_run CONNECTIONS SECONDS OUTFILE [wrk options...]
wrk_run() {
  local conns=$1 secs=$2 out=$3
  shift 3
  timed "$out" timeout $((secs + 20)) taskset -c "$PIN_CLIENT" \
    wrk -t1 -c"$conns" -d"${secs}s" -s "$BENCH/report.lua" "$@" "$URL"
}

# h2load_run OUTFILE [h2load options...]
h2load_run() {
  local out=$1
  shift
  timed "$out" timeout $((DURATION + WARMUP + 120)) taskset -c "$PIN_CLIENT" h2load "$@" "$URL"
}

# CPU per request of a wrk run after a warm-up: wrk_cpu ROW NAME REP CONNS [wrk options]
wrk_cpu() {
  local row=$1 name=$2 rep=$3 conns=$4
  shift 4
  wrk_run "$conns" "$WARMUP" "$TMP/warm.out" "$@"
  window_open
  wrk_run "$conns" "$DURATION" "$TMP/wrk.out" "$@"
  parse_wrk "$TMP/wrk.out"
  window_close "$DUR_S"
  [ "$REQS" -gt 0 ] || die "wrk completed no request against $name"
  local rps
  rps=$(awk -v r="$REQS" -v d="$DUR_S" 'BEGIN { printf "%.0f", r / d }')
  record "$row" "$name" "$rep" "$(per_unit_us "$TICKS" "$REQS")" "$ERRS" "$LOAD" \
    "reqs=$REQS rps=$rps" \
    "p99_ms=$(awk -v u="$P99_US" 'BEGIN { printf "%.2f", u / 1000 }')"
  record "${row}_rps" "$name" "$rep" "$rps" 0 "(same run)"
}

# --- the jobs: one rep of one row against the running proxy ------------------------------------

job_sticky() {
  prepare "$1" ""
  wrk_cpu "${3:-sticky}" "$1" "$2" 32 -H "Cookie: $COOKIE"
}

job_newsess() {
  prepare "$1" ""
  wrk_cpu newsess "$1" "$2" 32
}

job_h2() {
  local name=$1 rep=$2
  prepare "$name" "$H2LOAD_UA"
  h2load_run "$TMP/warm.out" -c10 -m5 -D "$WARMUP" -H "cookie: $COOKIE"
  window_open
  h2load_run "$TMP/h2.out" -c10 -m5 -D "$DURATION" -H "cookie: $COOKIE"
  window_close "$DURATION"
  parse_h2load "$TMP/h2.out"
  grep -q '^Application protocol: h2' "$TMP/h2.out" || die "$name did not negotiate h2"
  record h2 "$name" "$rep" "$(per_unit_us "$TICKS" "$REQS")" "$ERRS" "$LOAD" "reqs=$REQS"
  record h2_rps "$name" "$rep" "$(awk -v r="$REQS" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }')" 0 "(same run)"
}

job_fixed() {
  local name=$1 rep=$2 rate=(--h1 -c50 --rps=200)
  prepare "$name" "$H2LOAD_UA"
  h2load_run "$TMP/warm.out" "${rate[@]}" -D "$WARMUP" -H "cookie: $COOKIE"
  window_open
  h2load_run "$TMP/fixed.out" "${rate[@]}" -D "$DURATION" -H "cookie: $COOKIE" \
    --log-file="$TMP/fixed.log"
  window_close "$DURATION"
  parse_h2load "$TMP/fixed.out"
  log_percentiles "$TMP/fixed.log"
  record fixed_p50 "$name" "$rep" "$(awk -v u="$P50_US" 'BEGIN { printf "%.3f", u / 1000 }')" "$ERRS" \
    "$LOAD" "reqs=$REQS rps=$(awk -v r="$REQS" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }')" \
    "cpu_us/req=$(per_unit_us "$TICKS" "$REQS")"
  record fixed_p99 "$name" "$rep" "$(awk -v u="$P99_US" 'BEGIN { printf "%.3f", u / 1000 }')" 0 "(same run)"
  record fixed_rps "$name" "$rep" "$(awk -v r="$REQS" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }')" 0 "(same run)"
}

job_closed() {
  local name=$1 rep=$2
  prepare "$name" ""
  wrk_run 50 "$WARMUP" "$TMP/warm.out" -H "Cookie: $COOKIE"
  window_open
  wrk_run 50 "$DURATION" "$TMP/wrk.out" -H "Cookie: $COOKIE"
  parse_wrk "$TMP/wrk.out"
  window_close "$DUR_S"
  record closed_p99 "$name" "$rep" "$(awk -v u="$P99_US" 'BEGIN { printf "%.3f", u / 1000 }')" "$ERRS" \
    "$LOAD" "reqs=$REQS p50_ms=$(awk -v u="$P50_US" 'BEGIN { printf "%.3f", u / 1000 }')" \
    "cpu_us/req=$(per_unit_us "$TICKS" "$REQS")"
}

# A new client (TLS connection, full handshake) per request at HS_RATE connections/s.
job_handshake() {
  local name=$1 rep=$2 n reuse=""
  prepare "$name" "$H2LOAD_UA"
  n=$((HS_RATE * WARMUP))
  h2load_run "$TMP/warm.out" --h1 -r "$HS_RATE" -c "$n" -n "$n" -H "cookie: $COOKIE"
  n=$((HS_RATE * DURATION))
  window_open
  h2load_run "$TMP/hs.out" --h1 -r "$HS_RATE" -c "$n" -n "$n" -H "cookie: $COOKIE"
  parse_h2load "$TMP/hs.out" count
  window_close "$DUR_S"
  if [ "$name" = haproxy ]; then
    reuse=$(haproxy_reuse_pct)
    [ "$reuse" = 0 ] || die "handshake row: HAProxy reports ${reuse}% resumed TLS sessions"
  fi
  record handshake "$name" "$rep" "$(per_unit_us "$TICKS" "$REQS")" "$ERRS" "$LOAD" \
    "conns=$REQS secs=$DUR_S${reuse:+ haproxy_reuse=$reuse%}"
}

# Opens IDLE_CONNS idle TLS keep-alive connections (one request each) and waits until
# they are all open; sets IDLE_CLIENT and ESTABLISHED. idle_close ends them and sets
# IDLE_OPEN and IDLE_ERRS.
idle_open() {
  rm -f "$TMP/idle.ready" "$TMP/idle.stop"
  # Bounded by a rate of at least 50 connections/s.
  local wait_s=$((IDLE_CONNS / 50 + 60))
  timeout $((wait_s + DURATION + WARMUP + 120)) taskset -c "$PIN_CLIENT" python3 "$BENCH/idle_conns.py" \
    --port "$PROXY_PORT" --conns "$IDLE_CONNS" --cookie "$COOKIE" --ready-file "$TMP/idle.ready" \
    --stop-file "$TMP/idle.stop" --hold $((wait_s + DURATION + WARMUP + 60)) >"$TMP/idle.out" 2>&1 &
  IDLE_CLIENT=$!
  PIDS+=("$IDLE_CLIENT")
  for _ in $(seq $((wait_s * 10))); do
    [ -e "$TMP/idle.ready" ] && break
    kill -0 "$IDLE_CLIENT" 2>/dev/null || { cat "$TMP/idle.out" >&2; die "idle_conns.py failed"; }
    sleep 0.1
  done
  [ -e "$TMP/idle.ready" ] || die "idle connections not open after $wait_s s"
  # Idle connections settle (a proxy that frees buffers of idle connections lazily
  # shows it here).
  sleep "$IDLE_SETTLE"
  ESTABLISHED=$(ss -Htn state established "( sport = :$PROXY_PORT )" | wc -l)
}

idle_close() {
  local status
  touch "$TMP/idle.stop"
  wait "$IDLE_CLIENT" || die "idle_conns.py exited with an error"
  status=$(cat "$TMP/idle.ready")
  IDLE_OPEN=$(sed -E 's/.*open=([0-9]+).*/\1/' <<<"$status")
  IDLE_ERRS=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$status")
  [ "$ESTABLISHED" -ge "$IDLE_OPEN" ] || IDLE_ERRS=$((IDLE_ERRS + IDLE_OPEN - ESTABLISHED))
  [ "$IDLE_OPEN" -gt 0 ] || die "no idle connection opened"
}

# RSS per idle TLS keep-alive connection: IDLE_CONNS connections, one request each, idle.
job_idle() {
  local name=$1 rep=$2 before after
  prepare "$name" ""
  before=$(rss_bytes "$PROXY_PID")
  idle_open
  after=$(rss_bytes "$PROXY_PID")
  idle_close
  record idle "$name" "$rep" $(((after - before) / IDLE_OPEN)) "$IDLE_ERRS" \
    "conns=$IDLE_OPEN established=$ESTABLISHED rss_before=$before rss_after=$after"
}

# Connection handling at scale: IDLE_CONNS idle TLS connections stay open while
# SCALE_ACTIVE connections run the sticky job closed-loop; p99 of the active load and the
# proxy's RSS at its end.
job_scale() {
  local name=$1 rep=$2 before after
  prepare "$name" ""
  before=$(rss_bytes "$PROXY_PID")
  idle_open
  wrk_run "$SCALE_ACTIVE" "$WARMUP" "$TMP/warm.out" -H "Cookie: $COOKIE"
  window_open
  wrk_run "$SCALE_ACTIVE" "$DURATION" "$TMP/wrk.out" -H "Cookie: $COOKIE"
  parse_wrk "$TMP/wrk.out"
  window_close "$DUR_S"
  after=$(rss_bytes "$PROXY_PID")
  idle_close
  record scale_p99 "$name" "$rep" "$(awk -v u="$P99_US" 'BEGIN { printf "%.3f", u / 1000 }')" \
    $((ERRS + IDLE_ERRS)) "$LOAD" "reqs=$REQS rps=$(awk -v r="$REQS" -v d="$DUR_S" 'BEGIN { printf "%.0f", r / d }')" \
    "idle=$IDLE_OPEN established=$ESTABLISHED cpu_us/req=$(per_unit_us "$TICKS" "$REQS")"
  record scale_rss "$name" "$rep" "$(awk -v b="$after" 'BEGIN { printf "%.1f", b / 1048576 }')" 0 \
    "(same run) rss_before=$before rss_after=$after"
}

# cloakroom's metric NAME from the admin listener.
metric() {
  curl -s --max-time 5 "http://127.0.0.1:$PORT_ADMIN/metrics" |
    awk -v m="$1" '$1 == m { printf "%d", $2; found = 1 } END { if (!found) print "" }'
}

# RSS per anonymous session: SESSIONS cookie-less requests, each creates one.
job_session() {
  local name=$1 rep=$2 before after c0 c1 live errs
  URL="https://127.0.0.1:$PROXY_PORT/"
  curl -sk --http1.1 --max-time 5 --fail -o /dev/null "$URL" || die "$name answered an error"
  c0=$(metric cloakroom_sessions_created_total)
  [ -n "$c0" ] || die "cloakroom_sessions_created_total is not in /metrics"
  before=$(rss_bytes "$PROXY_PID")
  # Bounded by a rate of at least 2,000 sessions/s.
  timed "$TMP/sess.out" timeout $((SESSIONS / 2000 + 60)) taskset -c "$PIN_CLIENT" \
    h2load --h1 -n "$SESSIONS" -c 50 "$URL"
  parse_h2load "$TMP/sess.out" count
  sleep 1
  after=$(rss_bytes "$PROXY_PID")
  c1=$(metric cloakroom_sessions_created_total)
  live=$(metric cloakroom_sessions_active)
  errs=$ERRS
  # Every session created must still be live: none evicted by session.max_sessions.
  [ "$live" -ge "$c1" ] || { log "session row: $((c1 - live)) sessions evicted"; errs=$((errs + c1 - live)); }
  record session "$name" "$rep" $(((after - before) / (c1 - c0))) "$errs" \
    "created=$((c1 - c0)) live=$live rss_before=$before rss_after=$after"
}

# --- the run ----------------------------------------------------------------------------------
{
  echo "# Raw figures of bench/compare.sh, one line per row, proxy and rep"
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); REPS=$REPS DURATION=${DURATION}s WARMUP=${WARMUP}s IDLE_CONNS=$IDLE_CONNS SESSIONS=$SESSIONS HS_RATE=$HS_RATE"
  echo "# busy = share of one core (proxy: /proc ticks; client: user+sys over wall time)"
} >"$RAW"

log "baseline: wrk ${DURATION}s straight to the upstream (plain HTTP)"
URL="http://127.0.0.1:$UP1/"
wrk_run 32 "$DURATION" "$TMP/wrk.out"
parse_wrk "$TMP/wrk.out"
BASE_RPS=$(awk -v r="$REQS" -v d="$DUR_S" 'BEGIN { printf "%.0f", r / d }')
echo "baseline  upstream direct, plain HTTP, wrk -c32: $BASE_RPS req/s, errors=$ERRS" >>"$RAW"

# run_jobs JOBS WORKERS: every rep of every job, the peers alternating within a rep.
run_jobs() {
  local jobs=$1 workers=$2 job rep name
  for job in $jobs; do
    declare -F "job_$job" >/dev/null || die "unknown job $job"
    for rep in $(seq "$REPS"); do
      for name in "${PEERS[@]}"; do
        [ "$job" = session ] && [ "$name" != cloakroom ] && continue
        log "$job$ROW_SUFFIX rep $rep: $name"
        start_proxy "$name" "$job" "$workers"
        "job_$job" "$name" "$rep"
        stop_proxy "$name"
      done
    done
  done
}

# The upstream's and the clients' cores: pin_all one|all.
pin_all() {
  local cores=$ONE_PIN_CLIENT pid
  if [ "$1" = all ]; then
    cores=0-$(($(nproc) - 1))
    PIN_PROXY=$cores PIN_CLIENT=$cores ROW_SUFFIX=_all
  else
    PIN_PROXY=$ONE_PIN_PROXY PIN_CLIENT=$ONE_PIN_CLIENT ROW_SUFFIX=""
  fi
  for pid in $(proc_tree "$UPSTREAM_PID"); do
    taskset -a -p -c "$cores" "$pid" >/dev/null
  done
}

pin_all one
run_jobs "$JOBS" 1
if [ -n "$ALL_JOBS" ]; then
  log "all-cores rows: $ALL_JOBS"
  pin_all all
  run_jobs "$ALL_JOBS" 0
  pin_all one
fi

# shellcheck source=bench/report.sh
. "$BENCH/report.sh"
write_report >"$TMP/latest.md"
{
  echo
  echo "# cloakroom log lines (counted, all runs)"
  cloakroom_log_summary
} >>"$RAW"

mkdir -p "$RESULTS"
cp "$TMP/latest.md" "$RESULTS/latest.md"
cp "$RAW" "$RESULTS/latest-raw.txt"
cat "$TMP/latest.md"
log "cloakroom logged:"
cloakroom_log_summary >&2

status=0
for key in "${!ERRORS[@]}"; do
  [ "${ERRORS[$key]}" -eq 0 ] || { log "error: ${key/|/ on } had ${ERRORS[$key]} errors"; status=1; }
done
exit "$status"
