# The demo's Envoy for envoy/docker-compose.yaml (build context: the repository): Envoy 1.40.0, the
# version the tests run, with the filter module built from this checkout by the project's own
# Makefile (`make wasm`). Nothing has to be built on the host first, and no module is bind-mounted.
FROM rust:1.95.0-bookworm AS wasm
WORKDIR /src
COPY Cargo.toml Cargo.lock Makefile ./
COPY src ./src
COPY benches ./benches
RUN make wasm

FROM envoyproxy/envoy:v1.40.0
COPY --from=wasm /src/target/wasm32-wasip1/release/outgoing_auth.wasm /etc/envoy/outgoing_auth.wasm
