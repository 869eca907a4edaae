#!/usr/bin/env bash
# Where cloakroom's CPU per request goes, job by job (GitHub issue 10: "profile, then fix
# what the profile shows").
#
# For each job: (1) a native run of DURATION s (proxy pinned to core 0, h2load and the
# upstream nginx to core 1) gives the split of the proxy's CPU between user space and the
# kernel (utime/stime from /proc); (2) two runs under `valgrind --tool=callgrind`, of N1
# and N2 requests, give the instructions per request in user space ((run2 - run1) /
# (N2 - N1): start-up and the clients' handshakes cancel out), by component and by
# function (bench/callgrind_groups.py). Instruction counts repeat from run to run on a
# noisy machine where seconds do not (within about 1%: the batching of events differs).
#
# Caveat: valgrind's virtual CPU lacks some instructions (ADX, SHA-NI), so crypto runs
# other code paths under callgrind than natively: compare crypto in seconds (the peer
# bench), not in callgrind instructions.
#
# Jobs: sticky (h1 keep-alive, the sticky cookie on every request), new (h1, no cookie:
# a new session per request), h2 (10 connections x 5 streams, sticky cookie).
#
#   bench/profile.sh                      # all three: about 4 minutes
#   JOBS=h2 N1=1000 N2=5000 bench/profile.sh
#   SERVERS=1 NATIVE=0 bench/profile.sh   # one upstream server; callgrind only
#   BIN=/tmp/cloakroom-old bench/profile.sh   # another build (A/B), no cargo build
# Knobs: SERVERS (2: servers in the upstream; 1: only the first), NATIVE (1: the native
# user/kernel run; 0: skip it, e.g. on a busy machine), BIN (a cloakroom binary to
# profile instead of building target/release/cloakroom; bench/results/profile.md is then
# left as it is), KEEP (a directory: the callgrind output files are copied there, for
# callgrind_annotate).
# Installs valgrind, nginx, h2load and python3 with apt-get when missing. Writes
# bench/results/profile.md and prints it. Only 127.0.0.1 (ports 19421-19423); stops
# everything it started.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

JOBS=${JOBS:-sticky new h2}
N1=${N1:-2000}
N2=${N2:-10000}
DURATION=${DURATION:-5}
SERVERS=${SERVERS:-2}
NATIVE=${NATIVE:-1}
UP1=19421
UP2=19422
PORT_CLOAKROOM=19423
PIN_PROXY=0
PIN_CLIENT=1

export PATH=$PATH:/usr/sbin:/sbin
install_tools
command -v valgrind >/dev/null 2>&1 || {
  log "installing valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
# shellcheck disable=SC2034
CLK_TCK=$(getconf CLK_TCK)
H2LOAD_UA=$(h2load --version | awk '{ print "h2load nghttp2/" $NF; exit }')

TMP=$(mktemp -d /tmp/cloakroom-profile.XXXXXX)
chmod 755 "$TMP"
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
for port in $UP1 $UP2 $PORT_CLOAKROOM; do
  port_free "$port" || die "port $port is in use"
done

BIN_GIVEN=${BIN:-}
if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=$ROOT/target/release/cloakroom
fi
make_certificate
start_upstream
render "$BENCH/cloakroom.toml" "$PORT_CLOAKROOM" 1 >"$TMP/cloakroom.toml"
if [ "$SERVERS" = 1 ]; then
  sed -i "s|^servers  = .*|servers  = [\"127.0.0.1:$UP1\"]|" "$TMP/cloakroom.toml"
fi
URL=https://127.0.0.1:$PORT_CLOAKROOM/

# load JOB N: N requests of the job with h2load (the cookie in COOKIE_HEADER).
load() {
  local job=$1 n=$2 shape=(--h1 -c32)
  [ "$job" = h2 ] && shape=(-c10 -m5)
  timeout 600 taskset -c "$PIN_CLIENT" h2load "${shape[@]}" -n "$n" "${COOKIE_HEADER[@]}" "$URL" \
    >"$TMP/h2load.out" || die "h2load failed: $(tail -3 "$TMP/h2load.out")"
  grep -q " 0 failed, 0 errored" "$TMP/h2load.out" ||
    die "$job: requests failed: $(grep '^requests:' "$TMP/h2load.out")"
}

# The cookie for the job (none for "new"), fetched with h2load's User-Agent.
cookie_for() {
  COOKIE_HEADER=()
  if [ "$1" != new ]; then
    COOKIE_HEADER=(-H "cookie: $(learn_cookie "$URL" "$H2LOAD_UA" "")")
  fi
}

# callgrind_run JOB N OUT: one proxy under callgrind serving N requests of the job.
callgrind_run() {
  local job=$1 n=$2 out=$3 pid
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" \
    -c "$TMP/cloakroom.toml" >"$TMP/valgrind.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do
    port_free "$PORT_CLOAKROOM" || break
    kill -0 "$pid" 2>/dev/null || { cat "$TMP/valgrind.out" >&2; die "cloakroom did not start under valgrind"; }
    sleep 0.1
  done
  cookie_for "$job"
  load "$job" "$n"
  stop_pid "$pid"
}

# native_split JOB: sets USER_PCT and CPU_US (proxy CPU per request, user+kernel).
native_split() {
  local job=$1 pid before_u before_s after_u after_s reqs
  RUST_LOG=warn taskset -c "$PIN_PROXY" "$BIN" -c "$TMP/cloakroom.toml" >"$TMP/native.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$PORT_CLOAKROOM" "$pid" || die "cloakroom did not start"
  cookie_for "$job"
  load "$job" 20000
  read -r before_u before_s < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }')
  local shape=(--h1 -c32)
  [ "$job" = h2 ] && shape=(-c10 -m5)
  timeout $((DURATION + 30)) taskset -c "$PIN_CLIENT" h2load "${shape[@]}" -D "$DURATION" \
    "${COOKIE_HEADER[@]}" "$URL" >"$TMP/h2load.out"
  read -r after_u after_s < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }')
  reqs=$(awk '/^requests:/ { print $8 }' "$TMP/h2load.out")
  stop_pid "$pid"
  USER_PCT=$(awk -v u=$((after_u - before_u)) -v s=$((after_s - before_s)) \
    'BEGIN { printf "%.0f", (u + s > 0 ? 100 * u / (u + s) : 0) }')
  CPU_US=$(per_unit_us $((after_u - before_u + after_s - before_s)) "$reqs")
}

REPORT=$TMP/profile.md
{
  echo "# Where cloakroom's CPU per request goes"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), cloakroom $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)'),"
  echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(valgrind --version),"
  echo "$SERVERS upstream server(s), binary $BIN."
  echo "\`bench/profile.sh\`: user/kernel split from a native ${DURATION} s run (proxy pinned to"
  echo "core 0); instructions per request from two callgrind runs of $N1 and $N2 requests."
} >"$REPORT"

for job in $JOBS; do
  case $job in sticky | new | h2) ;; *) die "unknown job $job (sticky, new, h2)" ;; esac
  USER_PCT=? CPU_US=?
  if [ "$NATIVE" = 1 ]; then
    log "$job: native run, ${DURATION} s"
    native_split "$job"
  fi
  log "$job: callgrind, $N1 then $N2 requests"
  callgrind_run "$job" "$N1" "$TMP/callgrind.$job.1"
  callgrind_run "$job" "$N2" "$TMP/callgrind.$job.2"
  {
    echo
    echo "## $job"
    echo
    echo "Native: $CPU_US µs of proxy CPU per request, $USER_PCT% of it in user space (the rest"
    echo "is the kernel: TCP on loopback, wake-ups of the peer, epoll). User space, per request:"
    echo
    python3 "$BENCH/callgrind_groups.py" "$TMP/callgrind.$job.1" "$TMP/callgrind.$job.2" $((N2 - N1)) 15
  } >>"$REPORT"
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$TMP/callgrind.$job.1" "$TMP/callgrind.$job.2" "$KEEP/"
  fi
done

# An A/B run of another binary (BIN) does not replace the committed profile.
if [ -z "${BIN_GIVEN:-}" ]; then
  mkdir -p "$BENCH/results"
  cp "$REPORT" "$BENCH/results/profile.md"
fi
cat "$REPORT"
