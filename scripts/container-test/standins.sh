# Local stand-ins for the three official base images, for a machine that cannot pull
# them (no registry). Sourced by scripts/container-test.sh; each function makes its
# image under the official tag only when `docker pull` of that tag fails, so users
# and CI machines with a registry get the real images and the shipped Dockerfile and
# compose.yaml stay exactly what users run.
#
#   rust:1-bookworm                        Debian bookworm (debootstrap) + build tools +
#                                          this machine's Rust toolchain, laid out as in
#                                          the official image (/usr/local/cargo,
#                                          /usr/local/rustup, same PATH/CARGO_HOME/RUSTUP_HOME)
#   gcr.io/distroless/cc-debian12:nonroot  glibc, libgcc, CA certificates, /etc/passwd
#                                          with nonroot (65532); no shell, no package manager
#   redis:7-alpine                         Debian's redis-server (7.0) as user redis
#
# The debootstrap root filesystem is cached as a tarball under $STANDIN_CACHE, so a
# second run on the same machine (or after `docker system prune`) does not download it.
# The containers trust this machine's CA certificates (/etc/ssl/certs), so a build
# behind a TLS-inspecting egress reaches crates.io.

STANDIN_CACHE=${STANDIN_CACHE:-/var/cache/cloakroom-ci}
STANDIN_BASE=cloakroom-ci/bookworm-minbase:latest

# The Debian mirror this machine's apt uses (falls back to deb.debian.org).
standin_mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +\S+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1)
  echo "${uri:-http://deb.debian.org/debian}"
}

# Whether IMAGE is here, or can be pulled (quietly, bounded in time).
standin_have() {
  docker image inspect "$1" >/dev/null 2>&1 && return 0
  timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

# The bookworm minbase image every stand-in starts from, with this machine's CAs.
standin_base() {
  docker image inspect "$STANDIN_BASE" >/dev/null 2>&1 && return 0
  local tarball="$STANDIN_CACHE/bookworm-minbase.tar.gz"
  mkdir -p "$STANDIN_CACHE"
  if [ ! -s "$tarball" ]; then
    local root
    root=$(mktemp -d /tmp/cloakroom-rootfs.XXXXXX)
    echo "stand-in: debootstrap bookworm (minbase) from $(standin_mirror)"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$(standin_mirror)" \
      >"$STANDIN_CACHE/debootstrap.log" 2>&1 \
      || { echo "stand-in: debootstrap failed, see $STANDIN_CACHE/debootstrap.log" >&2; rm -rf "$root"; return 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  # This machine's CA certificates: the bundle, and the local ones so that a later
  # update-ca-certificates inside the image keeps them.
  local ctx
  ctx=$(mktemp -d /tmp/cloakroom-standin.XXXXXX)
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  mkdir -p "$ctx/local-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/local-ca/" 2>/dev/null || true
  docker import "$tarball" cloakroom-ci/bookworm-debootstrap:latest >/dev/null
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM cloakroom-ci/bookworm-debootstrap:latest
COPY local-ca/ /usr/local/share/ca-certificates/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["bash"]
DOCKERFILE
  docker build -q -t "$STANDIN_BASE" "$ctx" >/dev/null
  local rc=$?
  rm -rf "$ctx"
  return $rc
}

# rust:1-bookworm: build tools from Debian, the toolchain `rustc` runs here.
standin_rust() {
  local tag=rust:1-bookworm
  standin_have "$tag" && return 0
  standin_base || return 1
  local sysroot name version ctx
  sysroot=$(rustc --print sysroot) || { echo "stand-in: no Rust toolchain on this machine" >&2; return 1; }
  sysroot=$(realpath "$sysroot")
  name=$(basename "$sysroot")
  version=$(rustc --version | awk '{print $2}')
  ctx=$(mktemp -d /tmp/cloakroom-standin.XXXXXX)
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $STANDIN_BASE
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev make pkg-config git curl >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
COPY toolchain /usr/local/rustup/toolchains/$name
RUN mkdir -p /usr/local/cargo/bin \\
 && for b in /usr/local/rustup/toolchains/$name/bin/*; do ln -s "\$b" /usr/local/cargo/bin/; done \\
 && printf 'default_toolchain = "%s"\n' "$name" >/usr/local/rustup/settings.toml \\
 && chmod -R a+w /usr/local/cargo \\
 && cargo --version && rustc --version
DOCKERFILE
  echo "stand-in: $tag (Rust $version from this machine)"
  # The context streams the toolchain (without its HTML docs) straight from its folder.
  tar -c -C "$ctx" Dockerfile \
      -C "$(dirname "$sysroot")" --exclude="$name/share/doc" --transform "s,^$name,toolchain," "$name" \
    | docker build -q -t "$tag" - >/dev/null
  local rc=${PIPESTATUS[1]}
  rm -rf "$ctx"
  return "$rc"
}

# gcr.io/distroless/cc-debian12:nonroot: the files of libc6 and libgcc-s1 from the
# bookworm root filesystem, the CA bundle, the users; no shell.
standin_distroless() {
  local tag=gcr.io/distroless/cc-debian12:nonroot
  standin_have "$tag" && return 0
  standin_base || return 1
  local root list
  root=$(mktemp -d /tmp/cloakroom-distroless.XXXXXX)
  tar -C "$root" -xzf "$STANDIN_CACHE/bookworm-minbase.tar.gz" \
    || { rm -rf "$root"; return 1; }
  list="$root/.files"
  # Every file of the two packages, with its folder resolved through the merged /usr
  # symlinks (/lib -> usr/lib), so the tarball holds real paths.
  cat "$root"/var/lib/dpkg/info/libc6:amd64.list "$root"/var/lib/dpkg/info/libgcc-s1:amd64.list \
    | while read -r p; do
        [ -d "$root$p" ] && continue        # folders (and /lib, /lib64: links to folders)
        [ -e "$root$p" ] || [ -L "$root$p" ] || continue
        d=$(realpath "$root$(dirname "$p")")
        echo "${d#"$root"/}/$(basename "$p")"
      done | sort -u >"$list"
  mkdir -p "$root/out/etc/ssl/certs" "$root/out/tmp" "$root/out/home/nonroot"
  chmod 1777 "$root/out/tmp"
  chown 65532:65532 "$root/out/home/nonroot"
  cp /etc/ssl/certs/ca-certificates.crt "$root/out/etc/ssl/certs/"
  cat >"$root/out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
  cat >"$root/out/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
  (cd "$root" && tar -c --no-recursion -T .files lib lib64) | tar -C "$root/out" -x
  cp "$root/etc/nsswitch.conf" "$root/out/etc/" 2>/dev/null || true
  echo "stand-in: $tag (libc6 + libgcc-s1 of bookworm, no shell)"
  tar -C "$root/out" -c . | docker import \
    --change 'USER 65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$tag" >/dev/null
  local rc=$?
  rm -rf "$root"
  return "$rc"
}

# redis:7-alpine: Debian's redis-server, run as user redis like the official image.
standin_redis() {
  local tag=redis:7-alpine
  standin_have "$tag" && return 0
  standin_base || return 1
  local ctx
  ctx=$(mktemp -d /tmp/cloakroom-standin.XXXXXX)
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $STANDIN_BASE
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends redis-server >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
DOCKERFILE
  echo "stand-in: $tag (Debian's redis-server)"
  docker build -q -t "$tag" "$ctx" >/dev/null
  local rc=$?
  rm -rf "$ctx"
  return "$rc"
}
