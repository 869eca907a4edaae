# cloakroom container image: build on the official Rust image, run on distroless
# (glibc, CA certificates, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t cloakroom .
#   docker run --read-only -p 8443:8443 \
#     -e CLOAKROOM_SECRET="$(openssl rand -hex 32)" \
#     -v "$PWD/certs:/etc/cloakroom/certs:ro" cloakroom
#
# The config is /etc/cloakroom/proxy.toml (container/proxy.toml; mount your own over
# it). The secret and the admin token come from the environment. Nothing is written
# to the root filesystem; with session.persist set, mount a volume for that file.

FROM rust:1-bookworm AS build
WORKDIR /src
# Manifests first: the dependency layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin cloakroom \
 && strip target/release/cloakroom

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cloakroom /usr/local/bin/cloakroom
COPY container/proxy.toml /etc/cloakroom/proxy.toml
ENV CLOAKROOM_CONFIG=/etc/cloakroom/proxy.toml
USER 65532:65532
EXPOSE 8443 9901
# No shell or curl in the image: the binary probes its own admin /healthz
# (exit 0 on 200, 1 otherwise).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cloakroom", "health"]
ENTRYPOINT ["/usr/local/bin/cloakroom"]
