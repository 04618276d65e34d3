# usher container image (used by docker-compose.yml).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/usher /usr/local/bin/usher
COPY config/ /etc/usher/
EXPOSE 6432
ENTRYPOINT ["usher"]
CMD ["--config", "/etc/usher/usher.docker.toml"]
