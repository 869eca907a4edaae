#!/usr/bin/env bash
# Builds and runs the shipped container files unchanged: the Dockerfile, compose.yaml,
# and every command of the README's "Run it in a container" section, exactly as
# written (its ```sh blocks tagged container-*), in a scratch copy of the repository.
# Called by .ci/run; run alone: `scripts/container-test.sh` (as root, or a docker user).
#
# It installs what is missing (docker.io, docker-compose, debootstrap), starts dockerd
# when none runs, and fails loudly when the engine cannot run (never skips). Base
# images that cannot be pulled get local stand-ins under the official tags
# (scripts/container-test/standins.sh). It tears down whatever it started, and prints
# the image size and each step's time.
#
# CONTAINER_TEST_WARM=1 also times a rebuild after a change under src/ (the dependency
# layer cached), for the figures in the README.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
here="$repo/scripts/container-test"
# shellcheck source=container-test/standins.sh
source "$here/standins.sh"

t0=$(date +%s)
step_start=$t0
steps=()
step() {
  local now
  now=$(date +%s)
  if [ -n "${step_name:-}" ]; then
    steps+=("$(printf '%4ss  %s' $((now - step_start)) "$step_name")")
  fi
  step_name=$1
  step_start=$now
  echo "container-test: == $1"
}
fail() {
  echo "container-test: FAILED: $*" >&2
  exit 1
}
check() {
  echo "container-test: ok: $*"
}

# Whatever this script started goes when it ends: the compose project, the single
# container, the scratch folder, and dockerd if it was not running before. (Images stay:
# they are the build cache of the next run.)
work=""
dockerd_pid=""
cleanup() {
  set +e
  if [ -n "$work" ]; then
    (cd "$work" && docker compose down --remove-orphans -t 5 >/dev/null 2>&1)
    command docker rm -f cloakroom >/dev/null 2>&1
    rm -rf "$work"
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  fi
}
trap cleanup EXIT

# --- 1. the engine -------------------------------------------------------------------
step "tools and docker engine"
need=()
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "container-test: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log=/var/log/cloakroom-ci/dockerd.log
  mkdir -p "$(dirname "$log")"
  echo "container-test: starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 \
    || fail "dockerd does not run; its log says: $(tail -n 5 "$log" 2>/dev/null)"
fi
# `docker compose` (v2) where the plugin is installed, else Compose v1: the README's
# `docker compose ...` commands run through this function unchanged.
if ! command docker compose version >/dev/null 2>&1; then
  docker() {
    if [ "${1:-}" = compose ]; then
      shift
      docker-compose "$@"
    else
      command docker "$@"
    fi
  }
fi

# --- 2. base images --------------------------------------------------------------------
step "base images (pulled, or local stand-ins)"
standin_rust || fail "no rust:1-bookworm"
standin_distroless || fail "no gcr.io/distroless/cc-debian12:nonroot"
standin_redis || fail "no redis:7-alpine"

# --- the README's commands, in a scratch copy ------------------------------------------
work=$(mktemp -d /tmp/cloakroom-container-test.XXXXXX)
(cd "$repo" && tar -c Dockerfile compose.yaml .dockerignore Cargo.toml Cargo.lock src container) \
  | tar -C "$work" -x
cd "$work"

# The body of the README's ```sh block tagged NAME.
block() {
  awk -v tag="$1" '
    $0 ~ "^```sh " tag "$" { on = 1; next }
    on && /^```/ { exit }
    on { print }' "$repo/README.md"
}
# Runs a README block in this shell (its exports stay), echoing it.
run_block() {
  local text
  text=$(block "$1")
  [ -n "$text" ] || fail "README.md has no \`\`\`sh $1 block"
  echo "$text" | sed 's/^/  $ /'
  eval "$text"
}

step "docker build (README: container-build)"
run_block container-build
size=$(command docker image inspect cloakroom --format '{{.Size}}')
size_mb=$((size / 1000000))
[ "$size" -lt 40000000 ] || fail "the image is ${size_mb} MB (limit 40 MB)"
check "image size ${size_mb} MB (< 40 MB)"
cfg() { command docker image inspect cloakroom --format "$1"; }
[ "$(cfg '{{.Config.User}}')" = "65532:65532" ] || fail "image user is $(cfg '{{.Config.User}}')"
[ "$(cfg '{{.Config.StopSignal}}')" = "SIGTERM" ] || fail "STOPSIGNAL is not SIGTERM"
cfg '{{json .Config.Healthcheck.Test}}' | grep -q '"health"' || fail "HEALTHCHECK is not \`cloakroom health\`"
cfg '{{index .Config.Labels "org.opencontainers.image.title"}}' | grep -q cloakroom || fail "no OCI labels"
if command docker run --rm --entrypoint /bin/sh cloakroom -c true >/dev/null 2>&1; then
  fail "the runtime image has a shell"
fi
check "user 65532, STOPSIGNAL SIGTERM, HEALTHCHECK cloakroom health, OCI labels, no shell"

# --- 3. one container, the image's own config ---------------------------------------------
step "certificates (README: container-certs)"
run_block container-certs

step "one container alone (README: container-run)"
run_block container-run
https_ok() { curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
for _ in $(seq 1 50); do [ "$(https_ok https://127.0.0.1:8443/)" = 200 ] && break; sleep 0.2; done
[ "$(https_ok https://127.0.0.1:8443/)" = 200 ] || { command docker logs cloakroom; fail "the single container does not serve"; }
check "docker run of the image alone serves the demo apps (200)"
health() { command docker inspect -f '{{.State.Health.Status}}' "$1"; }
for _ in $(seq 1 40); do [ "$(health cloakroom)" = healthy ] && break; sleep 1; done
[ "$(health cloakroom)" = healthy ] || fail "the single container is $(health cloakroom)"
check "the single container is healthy by its HEALTHCHECK"
step "stop it (README: container-stop)"
run_block container-stop
step "without certificates: says what to mount"
msg=$(command docker run --rm --read-only cloakroom 2>&1) && fail "started without a certificate"
echo "$msg" | grep -q '/etc/cloakroom/certs' || fail "no hint of what to mount: $msg"
check "without certificates it exits and names /etc/cloakroom/certs"

step "check a config (README: container-check)"
run_block container-check
printf '[listen]\nhttps = "0.0.0.0:8443"\n[nonsense\n' >broken.toml
set +e
command docker run --rm -v "$PWD/broken.toml:/etc/cloakroom/proxy.toml:ro" cloakroom check >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "check of a broken config exited $rc, not 2"
check "\`docker run --rm cloakroom check\` exits 0 on the image's config and 2 on a broken one"

# --- 4. the compose pair ------------------------------------------------------------------
step "compose pair up (README: container-compose)"
run_block container-compose
id() { docker compose ps -q "$1"; }
for _ in $(seq 1 60); do
  [ "$(health "$(id cloakroom-1)")" = healthy ] && [ "$(health "$(id cloakroom-2)")" = healthy ] && break
  sleep 1
done
for s in cloakroom-1 cloakroom-2; do
  [ "$(health "$(id $s)")" = healthy ] || { docker compose logs "$s" | tail -n 20; fail "$s is $(health "$(id $s)")"; }
done
check "both replicas healthy by their own HEALTHCHECK"
for s in cloakroom-1 cloakroom-2; do
  c=$(id $s)
  [ "$(command docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$c")" = true ] || fail "$s root is writable"
  uid=$(command docker top "$c" -o pid,uid | awk 'NR==2{print $2}')
  [ "$uid" = 65532 ] || fail "$s runs as uid $uid"
done
check "replicas run as uid 65532 on a read-only root filesystem"

step "a session across the replicas"
jar=$work/jar
curl -sk -c "$jar" -b "$jar" -o /dev/null https://127.0.0.1:8443/
curl -sk -c "$jar" -b "$jar" -o /dev/null -X POST -d user=alice https://127.0.0.1:8443/login
curl -sk -b "$jar" https://127.0.0.1:8443/ | grep -q alice || fail "the login on replica 1 did not take"
curl -sk -b "$jar" https://127.0.0.1:8444/ | grep -q alice || fail "replica 2 does not know the session of replica 1"
check "a login on replica 1 is the same session on replica 2"

step "kill one replica"
command docker kill "$(id cloakroom-1)" >/dev/null
curl -sk -b "$jar" https://127.0.0.1:8444/ | grep -q alice || fail "replica 2 lost the session when replica 1 died"
check "with replica 1 killed, replica 2 serves that session"
docker compose up -d cloakroom-1 >/dev/null 2>&1

step "Redis stopped, then started"
docker compose stop -t 2 redis >/dev/null 2>&1
start=$(date +%s%N)
headers=$(curl -sk -b "$jar" -D - -o /dev/null --max-time 5 https://127.0.0.1:8444/ || true)
took=$(( ($(date +%s%N) - start) / 1000000 ))
echo "$headers" | head -n1 | grep -q ' 503' || fail "with Redis stopped a session route answered: $(echo "$headers" | head -n1)"
echo "$headers" | grep -qi '^retry-after:' || fail "the 503 has no Retry-After"
[ "$took" -lt 2000 ] || fail "the 503 took ${took} ms"
check "Redis stopped: 503 with Retry-After in ${took} ms"
docker compose start redis >/dev/null 2>&1
start=$(date +%s%N)
for _ in $(seq 1 150); do [ "$(https_ok https://127.0.0.1:8444/)" = 200 ] && break; sleep 0.1; done
[ "$(https_ok https://127.0.0.1:8444/)" = 200 ] || fail "no recovery after Redis started again"
check "Redis started again: session routes answer 200 after $(( ($(date +%s%N) - start) / 1000000 )) ms"

step "docker stop of a replica"
c=$(id cloakroom-2)
start=$(date +%s)
command docker stop "$c" >/dev/null
took=$(( $(date +%s) - start ))
code=$(command docker inspect -f '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || fail "docker stop: the replica exited $code"
[ "$took" -lt 35 ] || fail "docker stop took ${took}s"
check "docker stop: exit 0 in ${took}s"

step "no secret in the image"
secret_seen=$(command docker history --no-trunc cloakroom | grep -c -e "$CLOAKROOM_SECRET" -e "$CLOAKROOM_ADMIN_TOKEN" || true)
[ "$secret_seen" = 0 ] || fail "docker history shows a secret"
command docker history --no-trunc --format '{{.CreatedBy}}' cloakroom | grep -iE 'secret|token|password' \
  | grep -v -e 'CLOAKROOM_CONFIG' && fail "a layer mentions a secret" || true
check "docker history shows no secret"

step "logs and metrics (README: container-ops)"
docker compose up -d cloakroom-2 >/dev/null 2>&1
run_block container-ops

step "compose down (README: container-down)"
run_block container-down

if [ "${CONTAINER_TEST_WARM:-0}" = 1 ]; then
  step "warm rebuild after a change under src/"
  echo "// container-test: a source change" >>src/lib.rs
  command docker build -q -t cloakroom-warm . >/dev/null
  command docker rmi cloakroom-warm >/dev/null
fi

step done
echo "container-test: image cloakroom: ${size_mb} MB"
printf '%s\n' "${steps[@]}"
echo "container-test: all checks passed in $(( $(date +%s) - t0 ))s"
