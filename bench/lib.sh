# shellcheck shell=bash
# Parsers here set globals that compare.sh reads:
# shellcheck disable=SC2034

# Helpers for the bench scripts (sourced, not run; compare.sh uses them all): tools, processes and their cleanup,
# /proc readings, the three proxies' start and stop, and the load clients' parsing.
# LOG_NAME prefixes log lines (default: compare). Globals the functions rely on are set
# by the script first:
# ROOT BENCH TMP PIDS UP1 UP2 PORT_HAPROXY PORT_NGINX PORT_CLOAKROOM PORT_ADMIN
# MAXCONN WORKER_CONNS NOFILE IDLE_CONNS BIN PIN_PROXY PIN_CLIENT CLK_TCK.

log() { printf '%s [%3ss]: %s\n' "${LOG_NAME:-compare}" "$SECONDS" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- tools -----------------------------------------------------------------------------

# Installs the Debian packages whose commands are missing.
install_tools() {
  local need=()
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v taskset >/dev/null 2>&1 || need+=(util-linux)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq "${need[@]}" >/dev/null; then
    # Some releases ship only "nginx".
    need=("${need[@]/nginx-light/nginx}")
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# Raises the open-file limit for everything started from here on: the idle-connection
# row needs IDLE_CONNS descriptors in the client and in the proxy, and HAProxy reserves
# two per maxconn. Where the hard limit cannot be raised (no CAP_SYS_RESOURCE) the row
# uses as many connections as every proxy can hold, and says so (IDLE_NOTE).
# Sets NOFILE, IDLE_CONNS, IDLE_NOTE, MAXCONN (HAProxy) and WORKER_CONNS (nginx); the
# scale row adds SCALE_ACTIVE (default 1,000) active connections to the idle ones.
raise_file_limit() {
  local active=${SCALE_ACTIVE:-1000}
  local want=$((IDLE_CONNS * 2 + active * 4 + 4096)) most
  [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$want" ] || ulimit -Hn "$want" 2>/dev/null || true
  ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -Sn)
  [ "$NOFILE" = unlimited ] && NOFILE=1048576
  # HAProxy wants 2 x maxconn + about 30 descriptors; maxconn = IDLE_CONNS + the scale
  # row's active connections + 100.
  most=$((((NOFILE - 50) / 2 - 100 - active) / 100 * 100))
  IDLE_NOTE=""
  if [ "$IDLE_CONNS" -gt "$most" ]; then
    IDLE_NOTE=" (not $IDLE_CONNS: the file limit here is $NOFILE and cannot be raised, and HAProxy reserves 2 per connection)"
    log "open-file limit $NOFILE: the idle row uses $most connections, not $IDLE_CONNS"
    IDLE_CONNS=$most
  fi
  [ "$IDLE_CONNS" -ge 100 ] || die "open-file limit $NOFILE is too low for the idle-connection row"
  MAXCONN=$((IDLE_CONNS + active + 100))
  WORKER_CONNS=$((IDLE_CONNS + 2 * active + 1000))
}

# --- processes we start, and their cleanup ----------------------------------------------

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid ignored SIGTERM for 5 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Fills in the @...@ placeholders of a template: render TEMPLATE PORT [WORKERS]. The
# connection limits (set by raise_file_limit in compare.sh) default to 4096; THREADS
# (HAProxy's nbthread) and NGINX_WORKERS (worker_processes) to 1.
render() {
  sed -e "s|@TMP@|$TMP|g" -e "s|@UP1@|$UP1|g" -e "s|@UP2@|$UP2|g" -e "s|@PORT@|$2|g" \
    -e "s|@MAXCONN@|${MAXCONN:-4096}|g" -e "s|@WORKER_CONNS@|${WORKER_CONNS:-4096}|g" \
    -e "s|@NOFILE@|${NOFILE:-8192}|g" -e "s|@WORKERS@|${3:-1}|g" \
    -e "s|@THREADS@|${THREADS:-1}|g" -e "s|@NGINX_WORKERS@|${NGINX_WORKERS:-1}|g" "$1"
}

# --- /proc readings ----------------------------------------------------------------------

# A process and its direct children (nginx's workers).
proc_tree() { echo "$1 $(pgrep -P "$1" 2>/dev/null | tr '\n' ' ')"; }

# CPU ticks (utime+stime, every thread) of a process and its direct children.
cpu_ticks() {
  local total=0 pid fields
  for pid in $(proc_tree "$1"); do
    # Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
    fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
  done
  echo "$total"
}

# Resident memory in bytes (VmRSS) of a process and its direct children.
rss_bytes() {
  local total=0 pid kb
  for pid in $(proc_tree "$1"); do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${kb:-0} * 1024))
  done
  echo "$total"
}

# Runs a client command, its output to a file, and sets CLIENT_BUSY: the share of one
# core the client used (user+sys ÷ wall, %). A client near 100 % limits the row.
# timed OUTFILE COMMAND...
timed() {
  local out=$1 t
  shift
  t=$({
    TIMEFORMAT='%R %U %S'
    time "$@" >"$out" 2>&1
  } 2>&1) || { cat "$out" >&2; die "client failed: $*"; }
  CLIENT_BUSY=$(awk '{ if ($1 > 0) printf "%.0f", ($2 + $3) / $1 * 100; else print 0 }' <<<"${t##*$'\n'}")
}

# µs of CPU per unit: ticks_per_unit TICKS UNITS
per_unit_us() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
# Share of one core, %: busy_pct TICKS SECONDS
busy_pct() { awk -v t="$1" -v hz="$CLK_TCK" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? t / hz / s * 100 : 0) }'; }

# Busy and total jiffies of the proxy's core and of the clients' core, from /proc/stat.
# With a core list (the all-cores rows pin nothing) both figures are of all cores.
core_jiffies() {
  local a="cpu$PIN_PROXY" b="cpu$PIN_CLIENT"
  [[ "$PIN_PROXY" =~ ^[0-9]+$ ]] || a=cpu
  [[ "$PIN_CLIENT" =~ ^[0-9]+$ ]] || b=cpu
  awk -v a="$a" -v b="$b" '$1 == a { busy = $2 + $3 + $4 + $7 + $8 + $9; pa = busy " " busy + $5 + $6 }
      $1 == b { busy = $2 + $3 + $4 + $7 + $8 + $9; pb = busy " " busy + $5 + $6 }
      END { printf "%s %s ", pa, pb }' /proc/stat
}

# The measured window of a run: window_open before it, window_close SECONDS after it.
# Sets TICKS (the proxy's CPU ticks in the window) and LOAD: the proxy's, the upstream's
# and the client's share of a core, and how busy each of the two cores was in all (other
# work on the machine shows as a core busier than what runs on it).
window_open() {
  W_PROXY=$(cpu_ticks "$PROXY_PID")
  W_UP=$(cpu_ticks "$UPSTREAM_PID")
  W_CORES=$(core_jiffies)
}

window_close() {
  local secs=$1 up cores
  TICKS=$(($(cpu_ticks "$PROXY_PID") - W_PROXY))
  up=$(($(cpu_ticks "$UPSTREAM_PID") - W_UP))
  cores=$(awk -v s="$W_CORES" -v e="$(core_jiffies)" 'BEGIN { split(s, a); split(e, b)
      printf "%.0f %.0f", (b[2] > a[2] ? (b[1] - a[1]) * 100 / (b[2] - a[2]) : 0),
        (b[4] > a[4] ? (b[3] - a[3]) * 100 / (b[4] - a[4]) : 0) }')
  LOAD="proxy_busy=$(busy_pct "$TICKS" "$secs")% upstream_busy=$(busy_pct "$up" "$secs")%"
  LOAD="$LOAD client_busy=$CLIENT_BUSY% core$PIN_PROXY=${cores% *}% core$PIN_CLIENT=${cores#* }%"
  [[ "$PIN_PROXY" =~ ^[0-9]+$ ]] || LOAD="$LOAD (all cores)"
}

# --- the proxies ---------------------------------------------------------------------------

start_upstream() {
  render "$BENCH/upstream.nginx.conf" 0 >"$TMP/upstream.conf"
  taskset -c "$PIN_CLIENT" nginx -e "$TMP/upstream-error.log" -p "$TMP" -c "$TMP/upstream.conf" \
    -g 'daemon off;' >"$TMP/upstream.out" 2>&1 &
  UPSTREAM_PID=$!
  PIDS+=("$UPSTREAM_PID")
  if ! wait_port "$UP1" "$UPSTREAM_PID" || ! wait_port "$UP2" "$UPSTREAM_PID"; then
    cat "$TMP/upstream.out" "$TMP/upstream-error.log" >&2 || true
    die "upstream did not start"
  fi
}

make_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
  cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
}

# The cloakroom config for a job: the bench template, plus what the job needs.
# cloakroom_config WORKERS JOB
cloakroom_config() {
  local workers=$1 job=$2 conf=$TMP/cloakroom-$2-$1.toml
  render "$BENCH/cloakroom.toml" "$PORT_CLOAKROOM" "$workers" >"$conf"
  case $job in
    idle | scale)
      printf '\n[limits]\nmax_connections = %d\n' $((IDLE_CONNS + 2 * ${SCALE_ACTIVE:-1000})) >>"$conf"
      ;;
    session)
      # The admin listener serves /metrics: sessions created and live (none evicted).
      sed -i "s|^workers = .*|&\nadmin = \"127.0.0.1:$PORT_ADMIN\"|" "$conf"
      # The default bound is 1,000,000 sessions; leave room so that none is evicted.
      if [ "$SESSIONS" -ge 900000 ]; then
        printf '\n[session]\nmax_sessions = %d\n' $((SESSIONS + SESSIONS / 10)) >>"$conf"
      fi
      ;;
  esac
  echo "$conf"
}

# Starts one proxy for a job and sets PROXY_PID and PROXY_PORT.
# start_proxy NAME JOB [WORKERS]. WORKERS 0: every core (cloakroom `workers = 0`, HAProxy
# `nbthread` = cores, nginx `worker_processes auto`), unpinned.
start_proxy() {
  local name=$1 job=$2 workers=${3:-1} conf pin=(taskset -c "$PIN_PROXY")
  local THREADS=1 NGINX_WORKERS=1
  if [ "$workers" = 0 ]; then
    THREADS=$(nproc) NGINX_WORKERS=auto pin=()
  fi
  case $name in
    haproxy)
      PROXY_PORT=$PORT_HAPROXY
      render "$BENCH/haproxy.cfg" "$PROXY_PORT" >"$TMP/haproxy.cfg"
      haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy config check failed"
      "${pin[@]}" haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.out" 2>&1 &
      ;;
    nginx)
      PROXY_PORT=$PORT_NGINX
      render "$BENCH/nginx.conf" "$PROXY_PORT" >"$TMP/nginx.conf"
      "${pin[@]}" nginx -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf" \
        -g 'daemon off;' >"$TMP/nginx.out" 2>&1 &
      ;;
    cloakroom)
      PROXY_PORT=$PORT_CLOAKROOM
      conf=$(cloakroom_config "$workers" "$job")
      "$BIN" check -c "$conf" >"$TMP/cloakroom-check.out" 2>&1 ||
        { cat "$TMP/cloakroom-check.out" >&2; die "cloakroom check failed"; }
      RUST_LOG=warn "${pin[@]}" "$BIN" -c "$conf" >"$TMP/cloakroom.out" 2>&1 &
      ;;
    *) die "unknown proxy $name" ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_port "$PROXY_PORT" "$PROXY_PID" ||
    { cat "$TMP/$name.out" "$TMP/nginx-error.log" >&2 2>/dev/null || true; die "$name did not start"; }
}

# Stops the proxy; keeps cloakroom's log lines for the summary at the end.
stop_proxy() {
  local name=$1
  kill -0 "$PROXY_PID" 2>/dev/null || die "$name died during the run"
  stop_pid "$PROXY_PID"
  if [ "$name" = cloakroom ] && [ -s "$TMP/cloakroom.out" ]; then
    cat "$TMP/cloakroom.out" >>"$TMP/cloakroom-all.out"
  fi
}

# Repeated cloakroom log lines once each, with their count (timestamps cut off).
cloakroom_log_summary() {
  [ -s "$TMP/cloakroom-all.out" ] || return 0
  sed -E 's/^[0-9T:.-]+Z +//' "$TMP/cloakroom-all.out" | sort | uniq -c | sort -rn | head -10
}

# --- cookies -----------------------------------------------------------------------------

# The cookie a client would send: the first Set-Cookie's name=value, or FALLBACK if none.
# learn_cookie URL USER_AGENT FALLBACK. The User-Agent is the load client's (wrk sends
# none, h2load its own): with the default session.anomaly = "flag" a cookie used by
# another client family is flagged on every request, which is not the job measured.
learn_cookie() {
  local set
  set=$(curl -sk --http1.1 -H "User-Agent: $2" --max-time 5 -o /dev/null -D - "$1" | tr -d '\r' |
    awk 'tolower($1) == "set-cookie:" { print $2; exit }' | cut -d';' -f1)
  echo "${set:-$3}"
}

# Sends 20 requests with the cookie; all must answer 200 from one upstream port.
check_sticky() {
  local url=$1 cookie=$2 ua=$3 body ports=""
  for _ in $(seq 20); do
    body=$(curl -sk --http1.1 --max-time 5 --fail -H "User-Agent: $ua" -H "Cookie: $cookie" "$url") ||
      die "$url answered an error with cookie"
    ports="$ports $(awk '{print $2}' <<<"$body")"
  done
  [ "$(tr ' ' '\n' <<<"$ports" | sed '/^$/d' | sort -u | wc -l)" -eq 1 ] ||
    die "$url is not sticky with its cookie (upstream ports:$ports)"
}

tls_of() {
  openssl s_client -connect "127.0.0.1:$1" -servername localhost -alpn http/1.1 </dev/null 2>/dev/null |
    awk '/^New, / { print $2 " " $NF; exit }'
}

# HAProxy's share of resumed TLS sessions (%), from its stats socket.
haproxy_reuse_pct() {
  python3 - "$TMP/haproxy.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show info\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
for line in data.decode().splitlines():
    if line.startswith("SslFrontendSessionReuse_pct:"):
        print(line.split(":")[1].strip())
EOF
}

# --- the load clients' summaries ------------------------------------------------------------

# Parses wrk's output with bench/report.lua: sets REQS ERRS P50_US P99_US DUR_S.
parse_wrk() {
  local line requests duration_us p50_us p99_us status_errors socket_errors
  line=$(grep '^WRK ' "$1") || { cat "$1" >&2; die "no wrk summary"; }
  read -r requests duration_us p50_us p99_us status_errors socket_errors < <(
    sed 's/^WRK //; s/[a-z0-9_]*=//g' <<<"$line")
  REQS=$requests
  ERRS=$((status_errors + socket_errors))
  P50_US=$p50_us
  P99_US=$p99_us
  DUR_S=$(awk -v d="$duration_us" 'BEGIN { printf "%.3f", d / 1e6 }')
}

# Parses h2load's output: sets REQS (succeeded) ERRS ("failed": socket errors, timeouts
# and non-2xx answers; or the 4xx + 5xx count if larger) DUR_S. parse_h2load OUTFILE [count]: with "count" (a run of -n requests, not
# of -D seconds) a request started but not done is an error too.
parse_h2load() {
  local out=$1 mode=${2:-} fields total finished succeeded failed errored timeout status
  fields=$(awk '/^requests: / { print $2, $6, $8, $10, $12, $14 }' "$out")
  [ -n "$fields" ] || { cat "$out" >&2; die "no h2load summary"; }
  read -r total finished succeeded failed errored timeout <<<"$fields"
  status=$(awk '/^status codes: / { print $7 + $9 }' "$out")
  REQS=$succeeded
  ERRS=$((failed > ${status:-0} ? failed : ${status:-0}))
  : "$errored" "$timeout"   # both are counted in "failed"
  [ "$mode" = count ] && ERRS=$((ERRS + total - finished))
  DUR_S=$(awk '/^finished in / {
      v = $3; sub(/,$/, "", v); u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
      printf "%.3f", (u == "ms" ? v / 1000 : (u == "us" ? v / 1e6 : v)) }' "$out")
}

# p50 and p99 (µs) from an h2load --log-file (third column): sets P50_US P99_US.
log_percentiles() {
  read -r P50_US P99_US < <(cut -f3 "$1" | sort -n | awk '{ v[NR] = $1 }
    END { if (NR == 0) { print 0, 0; exit }
          i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
          i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
          print v[i50], v[i99] }')
}
