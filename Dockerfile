# The conveyor binary; every role is a subcommand (`api`, `worker`, `projector`, `migrate`, …).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin conveyor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/conveyor /usr/local/bin/conveyor
USER 65534
ENTRYPOINT ["conveyor"]
CMD ["dev"]
