# Static (musl) release build in a minimal non-root image.
#   docker build -t k8s-net-attach-def-controller:dev .
FROM rust:1.95-alpine AS build
# make: jemalloc (tikv-jemallocator) is built from its C sources.
RUN apk add --no-cache musl-dev make
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY e2e ./e2e
COPY manifests ./manifests
RUN cargo build --release --locked --bin k8s-net-attach-def-controller \
 && cp target/release/k8s-net-attach-def-controller /k8s-net-attach-def-controller

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /k8s-net-attach-def-controller /usr/local/bin/k8s-net-attach-def-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/k8s-net-attach-def-controller"]
CMD ["run"]
