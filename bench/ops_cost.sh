#!/usr/bin/env bash
# The CPU cost of operations features, in one run: cloakroom (workers = 1) on the
# session route of bench/compare.sh's job, four ways:
#   off       no admin listener (metrics not counted), no access log
#   metrics   admin listener (every request counted), no access log
#   text      metrics + access log, text
#   json      metrics + access log, JSON
# Figure: CPU microseconds of the cloakroom process per completed request (utime+stime
# from /proc over a wrk run). Upstream: `cloakroom demo-apps` (its CPU is not counted).
# Only 127.0.0.1, bounded in time, cleans up what it started.
#
#   bench/ops_cost.sh               # 10 s per variant
#   DURATION=5 bench/ops_cost.sh
#   BIN=/tmp/cloakroom bench/ops_cost.sh   # an already built binary
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
UP1=19501 UP2=19502 PORT=19511 ADMIN=19512
command -v wrk >/dev/null || { echo "ops_cost: needs wrk (apt-get install wrk)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/cloakroom-ops.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

if [ -z "${BIN:-}" ]; then   # BIN=path/to/cloakroom skips the build
  cargo build --release --quiet
  BIN=$ROOT/target/release/cloakroom
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
"$BIN" demo-apps "127.0.0.1:$UP1" "127.0.0.1:$UP2" 2>/dev/null &
PIDS+=($!)
wait_port $UP1

CLK_TCK=$(getconf CLK_TCK)
printf '| variant | requests/s | CPU µs per request |\n| --- | ---: | ---: |\n'
for variant in off metrics text json; do
  admin="" access=false format=text
  [ "$variant" != off ] && admin="admin = \"127.0.0.1:$ADMIN\""
  [ "$variant" = text ] && access=true
  [ "$variant" = json ] && access=true format=json
  cat >"$TMP/proxy.toml" <<TOML
[listen]
https = "127.0.0.1:$PORT"
workers = 1
$admin
[tls]
cert = "cert.pem"
key = "key.pem"
[log]
access = $access
format = "$format"
[upstreams.app]
servers = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
[[routes]]
path = "/"
upstream = "app"
TOML
  "$BIN" -c "$TMP/proxy.toml" 2>"$TMP/$variant.log" &
  pid=$!
  PIDS+=($pid)
  wait_port $PORT
  cookie=$(curl -sk -H "User-Agent:" -D - -o /dev/null "https://127.0.0.1:$PORT/" | tr -d '\r' |
    awk -F'[:;] *' 'tolower($1)=="set-cookie"{print $2; exit}')
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "Cookie: $cookie" "https://127.0.0.1:$PORT/" >/dev/null
  before=$(cpu_ticks $pid)
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Cookie: $cookie" "https://127.0.0.1:$PORT/")
  after=$(cpu_ticks $pid)
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')
  printf '| %s | %s | %s |\n' "$variant" "$rps" "$cpu"
  kill -TERM $pid
  wait $pid 2>/dev/null || true
done
