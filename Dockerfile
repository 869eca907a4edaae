# cloakroom container image: built on the official Rust image, run on distroless
# (glibc, CA certificates, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t cloakroom .
#   docker run --rm --read-only -p 8443:8443 -v "$PWD/certs:/etc/cloakroom/certs:ro" cloakroom
#
# The image's config, /etc/cloakroom/proxy.toml (container/proxy.toml), runs alone:
# the built-in demo apps behind the proxy, sessions in memory (the default command is
# `--demo`). Run your own with `--config` (see README "Run it in a container");
# compose.yaml selects /etc/cloakroom/compose.toml. Certificates are mounted at
# /etc/cloakroom/certs; secrets come from the environment, never from a layer. Nothing
# is written to the root filesystem (run it --read-only).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: built once against empty targets, so a
# change under src/ rebuilds only the cloakroom crate (the layer is rebuilt only when
# Cargo.toml or Cargo.lock change).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' >src/main.rs && : >src/lib.rs \
 && for b in $(awk '/^\[\[bench\]\]/{b=1;next} /^\[/{b=0} b&&/^name/{gsub(/[" ]/,"");sub(/name=/,"");print}' Cargo.toml); do \
      echo 'fn main() {}' >"benches/$b.rs"; done \
 && cargo build --release --locked --bin cloakroom \
 && rm -rf src target/release/.fingerprint/cloakroom-* target/release/deps/cloakroom-* \
      target/release/deps/libcloakroom-* target/release/cloakroom*
COPY src src
RUN cargo build --release --locked --bin cloakroom \
 && strip target/release/cloakroom \
 && mkdir -p /out/etc/cloakroom/certs

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="cloakroom" \
      org.opencontainers.image.description="TLS-terminating reverse proxy that gives legacy web apps hardened sessions" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/etc/cloakroom /etc/cloakroom
COPY --from=build /src/target/release/cloakroom /usr/local/bin/cloakroom
COPY container/proxy.toml container/compose.toml /etc/cloakroom/
ENV CLOAKROOM_CONFIG=/etc/cloakroom/proxy.toml
USER 65532:65532
EXPOSE 8443 9901
# SIGTERM: the proxy stops accepting, lets in-flight requests finish (timeouts.shutdown_grace)
# and exits 0; give `docker stop -t` / terminationGracePeriodSeconds more than that grace.
STOPSIGNAL SIGTERM
# No shell or curl in the image: the binary probes its own admin /healthz
# (exit 0 on 200, 1 otherwise).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cloakroom", "health"]
ENTRYPOINT ["/usr/local/bin/cloakroom"]
CMD ["--demo"]
