#!/usr/bin/env bash
# Session stores compared: the same cloakroom job (bench/compare.sh's: TLS, keep-alive,
# sticky affinity from the session cookie sent on every request, a session lookup and
# X-Session-Id injection per request, no access log, `workers = 1`) with the memory
# store, the Redis store (a local redis-server, no persistence), the Memcached store (a
# local memcached, one thread) and the cookie store. Prints requests/s and CPU per
# request of the proxy (and of the store's server) for each, as ratios to the memory
# store, then Redis memory per session at 100 000 sessions (INFO used_memory) and
# Memcached memory per session (stats `bytes` over the session items that a run of new
# sessions left, counted with `lru_crawler metadump`).
#
# Only 127.0.0.1, bounded in time (2 × (WARMUP + DURATION) s of load plus the build),
# cleans up every process it started. Writes bench/results/stores.md.
#
#   bench/stores.sh                  # 10 s runs
#   DURATION=5 bench/stores.sh
#   SKIP_BUILD=1 bench/stores.sh     # use the release build already in target/
# The session cookie is fetched without a User-Agent, like wrk sends its requests:
# with the default session.anomaly = "flag" a cookie used by another client family is
# flagged and logged on every request, which is not the job being measured.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
LOG_NAME=stores
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
UP1=19431
UP2=19432
PORT=19433
REDIS_PORT=19434
MEMCACHED_PORT=19435
SECRET=stores-bench-secret-0123456789abcdef0123

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || need+=(memcached)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin

TMP=$(mktemp -d /tmp/cloakroom-stores.XXXXXX)
chmod 755 "$TMP"
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in $UP1 $UP2 $PORT $REDIS_PORT $MEMCACHED_PORT; do
  port_free "$port" || die "port $port is in use"
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  cargo build --release --quiet --bin cloakroom --example redis_session_memory
fi
BIN=$ROOT/target/release/cloakroom

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
render "$BENCH/upstream.nginx.conf" 0 >"$TMP/upstream.conf"
nginx -e "$TMP/upstream-error.log" -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' \
  >"$TMP/upstream.out" 2>&1 &
PIDS+=($!)
wait_port "$UP1" "$!" || die "upstream did not start"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "$REDIS_PID" || die "redis-server did not start"

memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -t 1 -m 256 -u "$(id -un)" >"$TMP/memcached.log" 2>&1 &
MEMCACHED_PID=$!
PIDS+=("$MEMCACHED_PID")
wait_port "$MEMCACHED_PORT" "$MEMCACHED_PID" || die "memcached did not start"

# memcached_cmd TEXT: sends one command, prints the answer up to END (python3: no nc needed).
memcached_cmd() {
  python3 - "$MEMCACHED_PORT" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(sys.argv[2].encode() + b"\r\n")
data = b""
while not (data.endswith(b"END\r\n") or data.endswith(b"OK\r\n")):
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
PY
}

CLK_TCK=$(getconf CLK_TCK)
ROWS=()
declare -A RPS_OF CPU_OF

# bench_store NAME STORE_TOML [SERVER_PID]: SERVER_PID is the store's server, whose CPU
# per request is reported too.
bench_store() {
  local name=$1 store=$2 server_pid=${3:-} pid cookie out line before after rbefore=0 rafter=0
  render "$BENCH/cloakroom.toml" "$PORT" 1 >"$TMP/c-$name.toml"
  printf '\n[session]\nsecret = "%s"\n%b\n' "$SECRET" "$store" >>"$TMP/c-$name.toml"
  RUST_LOG=warn "$BIN" -c "$TMP/c-$name.toml" >"$TMP/c-$name.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PORT" "$pid" || { cat "$TMP/c-$name.out" >&2; die "cloakroom ($name) did not start"; }
  cookie=$(curl -sk -H "User-Agent:" --max-time 5 -o /dev/null -D - "https://127.0.0.1:$PORT/" | tr -d '\r' |
    awk 'tolower($1) == "set-cookie:" { print $2; exit }' | cut -d';' -f1)
  [ -n "$cookie" ] || die "$name set no cookie"
  timeout $((WARMUP + 10)) wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "Cookie: $cookie" \
    "https://127.0.0.1:$PORT/" >/dev/null
  before=$(cpu_ticks "$pid")
  [ -z "$server_pid" ] || rbefore=$(cpu_ticks "$server_pid")
  out=$(timeout $((DURATION + 15)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
    -s "$BENCH/report.lua" -H "Cookie: $cookie" "https://127.0.0.1:$PORT/")
  after=$(cpu_ticks "$pid")
  [ -z "$server_pid" ] || rafter=$(cpu_ticks "$server_pid")
  line=$(grep '^WRK ' <<<"$out") || die "no wrk summary: $out"
  # shellcheck disable=SC2046
  eval $(sed 's/^WRK //' <<<"$line")
  local errs=$((status_errors + socket_errors))
  local rps cpu rcpu
  rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
  rcpu=$(awk -v t=$((rafter - rbefore)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
  RPS_OF[$name]=$rps
  CPU_OF[$name]=$cpu
  ROWS+=("$name|$rps|$(awk -v u="$p99_us" 'BEGIN { printf "%.2f", u / 1000 }')|$cpu|$rcpu|$errs|$requests")
  log "$name: $rps req/s, $cpu CPU µs/req (store server $rcpu), $errs errors"
  if [ "$name" = memcached ]; then
    memcached_sessions "$pid"
  fi
  stop_pid "$pid"
}

# memcached_sessions PID: new sessions (no cookie) for a few seconds on a flushed
# memcached, then stats bytes per session item.
memcached_sessions() {
  memcached_cmd "flush_all" >/dev/null
  sleep 1.1 # flush_all takes effect at the next second
  timeout 20 wrk -t1 -c8 -d3s "https://127.0.0.1:$PORT/" >/dev/null
  local stats dump sessions items bytes
  stats=$(memcached_cmd "stats")
  dump=$(memcached_cmd "lru_crawler metadump all")
  sessions=$(grep -c '^key=cloakroom%3As%3A\|^key=cloakroom:s:' <<<"$dump" || true)
  items=$(awk '$2 == "curr_items" { print $3 + 0 }' <<<"$stats")
  bytes=$(awk '$2 == "bytes" { print $3 + 0 }' <<<"$stats")
  MC_MEMORY=$(awk -v b="$bytes" -v s="$sessions" -v i="$items" 'BEGIN {
    if (s > 0) printf "%.0f bytes of item memory per session (stats bytes %d over %d sessions; %d items: each anonymous session is its record and its public-id mapping)", b / s, b, s, i;
    else print "no session items found" }')
  log "memcached memory per session: $MC_MEMORY"
}

bench_store memory 'store = "memory"'
bench_store redis "store = \"redis\"\n[session.redis]\nurl = \"redis://127.0.0.1:$REDIS_PORT/0\"" "$REDIS_PID"
bench_store memcached "store = \"memcached\"\n[session.memcached]\nservers = [\"127.0.0.1:$MEMCACHED_PORT\"]" "$MEMCACHED_PID"
bench_store cookie 'store = "cookie"'

log "redis memory per session"
MEMORY=$(REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" "$ROOT/target/release/examples/redis_session_memory")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
REPORT=$TMP/stores.md
{
  echo "# cloakroom session stores: memory vs Redis vs Memcached vs the sealed cookie"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), cloakroom $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(redis-server --version | awk '{print $1, $3}'), $(nproc) cores."
  echo
  echo "Job: bench/compare.sh's sticky keep-alive job (TLS, session route, cookie on every request),"
  echo "\`workers = 1\`, \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\` after ${WARMUP}s warm-up. Redis: local, no persistence;"
  echo "Memcached: local, one thread. A request of a known session is one GET (Redis) or one \`mg\` (Memcached);"
  echo "its use is written back at most once per touch_interval. A shared 2-core machine: rough figures."
  echo
  echo "| store | req/s | p99 ms | proxy CPU µs/req | store server CPU µs/req | errors | requests |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r n rps p99 cpu rcpu errs reqs <<<"$row"
    echo "| $n | $rps | $p99 | $cpu | $rcpu | $errs | $reqs |"
  done
  echo
  echo "Redis ÷ memory: throughput **$(ratio "${RPS_OF[redis]}" "${RPS_OF[memory]}")×**, proxy CPU per request **$(ratio "${CPU_OF[redis]}" "${CPU_OF[memory]}")×**."
  echo "Memcached ÷ memory: throughput **$(ratio "${RPS_OF[memcached]}" "${RPS_OF[memory]}")×**, proxy CPU per request **$(ratio "${CPU_OF[memcached]}" "${CPU_OF[memory]}")×**."
  echo "Memcached ÷ Redis: throughput **$(ratio "${RPS_OF[memcached]}" "${RPS_OF[redis]}")×**, proxy CPU per request **$(ratio "${CPU_OF[memcached]}" "${CPU_OF[redis]}")×**."
  echo "Cookie ÷ memory: throughput **$(ratio "${RPS_OF[cookie]}" "${RPS_OF[memory]}")×**, proxy CPU per request **$(ratio "${CPU_OF[cookie]}" "${CPU_OF[memory]}")×**."
  echo
  echo "Redis memory: $MEMORY."
  echo
  echo "Memcached memory: ${MC_MEMORY:-not measured}."
} >"$REPORT"
mkdir -p "$BENCH/results"
cp "$REPORT" "$BENCH/results/stores.md"
cat "$REPORT"
