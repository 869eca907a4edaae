#!/usr/bin/env bash
# The PostgreSQL store's cost, against the memory store, on compare.sh's sticky
# keep-alive job (TLS, keep-alive, one session cookie on every request, one worker),
# and the rows it writes per second at 1,000 active sessions with the touch throttle.
#
# A throwaway PostgreSQL cluster (initdb into a temp folder, as the postgres user when
# run as root), the shared nginx upstream of compare.sh, cloakroom built --release.
# Only 127.0.0.1, bounded in time (about 6 x DURATION s of load), cleans up every
# process it started. Prints a Markdown table.
#
#   bench/postgres.sh               # DURATION=8
#   DURATION=5 TOUCH=5s bench/postgres.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
LOG_NAME=postgres-bench
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
TOUCH=${TOUCH:-5s}       # touch_interval of the 1,000-session run
SESSIONS=${SESSIONS:-1000}
UP1=19451
UP2=19452
PORT=19453
PGPORT=19454


for tool in wrk nginx openssl curl psql; do
  command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (bench/compare.sh installs wrk and nginx)"
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || die "PostgreSQL is not installed"

TMP=$(mktemp -d /tmp/cloakroom-pgbench.XXXXXX)
chmod 755 "$TMP"
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  [ -d "$TMP/pgdata" ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/pgdata" stop -m immediate -w >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CLK_TCK=$(getconf CLK_TCK)
sql() { psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atc "$1"; }

log "cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/cloakroom

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
render "$BENCH/upstream.nginx.conf" 0 >"$TMP/upstream.conf"
nginx -e "$TMP/upstream-error.log" -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' >"$TMP/upstream.out" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_port "$UP1" "$UPSTREAM_PID" || die "upstream did not start"

log "PostgreSQL cluster on $PGPORT"
mkdir "$TMP/pg" && [ "$(id -u)" = 0 ] && chown postgres "$TMP/pg"
as_pg "$PGBIN/initdb" -U postgres --auth=trust -E UTF8 --no-sync -D "$TMP/pg/data" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/log" -w \
  -o "-p $PGPORT -k $TMP/pg -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
ln -s "$TMP/pg/data" "$TMP/pgdata"
PG_PID=$(head -1 "$TMP/pg/data/postmaster.pid")

# config STORE TOUCH -> $TMP/cloakroom.toml
config() {
  cat >"$TMP/cloakroom.toml" <<EOF
[listen]
https = "127.0.0.1:$PORT"
workers = 1
[tls]
cert = "$TMP/cert.pem"
key  = "$TMP/key.pem"
[log]
access = false
[session]
store = "$1"
secret = "0123456789abcdef0123456789abcdef-bench"
touch_interval = "$2"
[session.postgres]
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
[upstreams.app]
servers  = ["127.0.0.1:$UP1", "127.0.0.1:$UP2"]
affinity = "sticky"
[[routes]]
path = "/"
upstream = "app"
EOF
}

cat >"$TMP/many.lua" <<'EOF'
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do cookies[#cookies + 1] = line end
local i = 0
request = function()
  i = i % #cookies + 1
  return wrk.format(nil, nil, { Cookie = cookies[i] })
end
EOF
cat "$BENCH/report.lua" >>"$TMP/many.lua"

# run NAME STORE TOUCH SESSIONS -> one table row
ROWS=()
run() {
  local name=$1 store=$2 touch=$3 sessions=$4 pid url out line cookie script=()
  config "$store" "$touch"
  RUST_LOG=warn "$BIN" -c "$TMP/cloakroom.toml" >"$TMP/cloakroom.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PORT" "$pid" || { cat "$TMP/cloakroom.out" >&2; die "cloakroom did not start"; }
  url="https://127.0.0.1:$PORT/"
  # One request per URL on one connection, no cookie jar: one new session each.
  printf "$url %.0s" $(seq "$sessions") | xargs curl -sk -H "User-Agent:" --max-time 60 -o /dev/null -D - |
    tr -d '\r' | awk 'tolower($1) == "set-cookie:" { print $2 }' | cut -d';' -f1 >"$TMP/cookies"
  [ "$(wc -l <"$TMP/cookies")" -eq "$sessions" ] || die "$name: expected $sessions cookies"
  if [ "$sessions" -eq 1 ]; then
    script=(-s "$BENCH/report.lua" -H "Cookie: $(cat "$TMP/cookies")")
  else
    script=(-s "$TMP/many.lua")
  fi
  COOKIES=$TMP/cookies timeout $((WARMUP + 10)) wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null
  local before pg_before w_before
  before=$(cpu_ticks "$pid")
  pg_before=$(cpu_ticks "$PG_PID")
  w_before=$(sql "SELECT coalesce(sum(n_tup_upd + n_tup_ins + n_tup_del), 0) FROM pg_stat_user_tables")
  out=$(COOKIES=$TMP/cookies timeout $((DURATION + 15)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "${script[@]}" "$url")
  local after pg_after w_after
  after=$(cpu_ticks "$pid")
  pg_after=$(cpu_ticks "$PG_PID")
  sleep 1   # the statistics collector reports with a delay of up to 500 ms
  w_after=$(sql "SELECT coalesce(sum(n_tup_upd + n_tup_ins + n_tup_del), 0) FROM pg_stat_user_tables")
  line=$(grep '^WRK ' <<<"$out") || die "no wrk summary: $out"
  eval "$(sed 's/^WRK //' <<<"$line")"
  local rps cpu pgcpu writes
  rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }')
  pgcpu=$(awk -v t=$((pg_after - pg_before)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }')
  writes=$(awk -v w=$((w_after - w_before)) -v d="$duration_us" 'BEGIN { printf "%.0f", w / (d / 1e6) }')
  [ "$store" = memory ] && { pgcpu=-; writes=-; }
  ROWS+=("$name|$rps|$cpu|$pgcpu|$writes|$((status_errors + socket_errors))")
  log "$name: $rps req/s, $cpu us CPU/request (proxy), $pgcpu (PostgreSQL), $writes rows written/s"
  stop_pid "$pid"
  if [ -s "$TMP/cloakroom.out" ]; then
    log "$name logged (repeated lines once, with their count):"
    sed -E 's/^[^ ]+ +//' "$TMP/cloakroom.out" | sort | uniq -c | sort -rn | head -5 >&2
  fi
}

run "memory, 1 session" memory 3m 1
run "postgres, 1 session" postgres 3m 1
run "memory, $SESSIONS sessions" memory "$TOUCH" "$SESSIONS"
run "postgres, $SESSIONS sessions, touch_interval $TOUCH" postgres "$TOUCH" "$SESSIONS"
run "postgres, $SESSIONS sessions, touch_interval 1ms" postgres 1ms "$SESSIONS"

echo
echo "| run | requests/s | proxy CPU µs/request | PostgreSQL CPU µs/request | rows written/s | errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for row in "${ROWS[@]}"; do echo "| ${row//|/ | } |"; done
