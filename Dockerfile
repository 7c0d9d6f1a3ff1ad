# teachlyd container image: the release binary on debian:bookworm-slim, run as the non-root user
# teachlyd (uid/gid 10001), listening on 0.0.0.0:8000.
#
#   docker build -t teachlyd .
#   docker run -p 127.0.0.1:8000:8000 -v teachlyd-data:/var/lib/teachlyd \
#       -e GOOGLE_CLIENT_ID=... -e TEACHLYD_SESSION_SECRET=... -e CORS_ORIGINS=https://app.example teachlyd
#
# The build needs BuildKit for its cache mounts: the default builder since Docker 23 and in
# `docker compose`; with docker-compose 1.29 set DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1. It
# downloads nothing but the two base images, Debian packages and crates from crates.io.
#
# Sign-in must be configured by whoever runs the image. Off loopback, and with no Google client id,
# teachlyd refuses to start (exit 78) unless dev login is forced on, so give it at run time:
#   GOOGLE_CLIENT_ID         the Google OAuth client id(s) of the frontend, comma-separated
#   TEACHLYD_SESSION_SECRET  at least 32 random bytes (e.g. `openssl rand -base64 48`); pass it from a
#                            secret store, never bake it into an image or a compose file in git
#   CORS_ORIGINS             the frontend's origin(s), comma-separated
#   DATABASE_URL             postgres://USER:PASSWORD@HOST/DB; without it the embedded SQLite database
#                            /var/lib/teachlyd/teachlyd.db (one instance only) keeps the state
# or mount a whole configuration file over /etc/teachlyd/config.toml (environment variables still
# override it; every key is in config.toml.example). docker-compose.yml runs this image for
# development with dev login instead.
#
# `docker exec CONTAINER teachlyd admin stats` talks to the daemon over /run/teachlyd/admin.sock.
# On `docker stop` teachlyd gets SIGTERM and takes up to server.shutdown_grace (10s) to close its
# sockets and finish writes: stop it with a timeout longer than that (`docker stop -t 20`,
# compose's stop_grace_period).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole workspace (the bench member and the lockfile included, for --locked); .dockerignore keeps
# target/, .git and local databases out of the context.
COPY . .
# target/ lives in a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,id=teachlyd-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=teachlyd-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=teachlyd-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin teachlyd \
    && install -D -m 0755 target/release/teachlyd /out/teachlyd

FROM debian:bookworm-slim
# The release binary links only libc, libm and libgcc_s; ca-certificates is for the HTTPS fetch of
# Google's signing keys. Not pinned: Debian's security updates replace the version in place.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid, so volumes and Kubernetes' runAsUser stay stable across rebuilds. /run/teachlyd holds
# the admin socket (the default admin.socket); without it serve would run without one.
RUN groupadd --system --gid 10001 teachlyd \
    && useradd --system --uid 10001 --gid teachlyd --home-dir /var/lib/teachlyd --no-create-home \
        --shell /usr/sbin/nologin --comment "Teachly chat backend" teachlyd \
    && install -d -o teachlyd -g teachlyd -m 0750 /var/lib/teachlyd \
    && install -d -o teachlyd -g teachlyd -m 0750 /run/teachlyd
COPY --from=builder /out/teachlyd /usr/bin/teachlyd
COPY packaging/docker/config.toml /etc/teachlyd/config.toml
COPY --chmod=0755 packaging/docker/healthcheck /usr/local/bin/teachlyd-healthcheck

# Overrides server.listen of any mounted config file too; set TEACHLYD_LISTEN to change it.
ENV TEACHLYD_LISTEN=0.0.0.0:8000
WORKDIR /var/lib/teachlyd
VOLUME ["/var/lib/teachlyd"]
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# GET /health every 30 s from inside the container (well under its later limit of 10 a minute per IP).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/teachlyd-healthcheck"]
ENTRYPOINT ["/usr/bin/teachlyd"]
CMD ["serve"]
