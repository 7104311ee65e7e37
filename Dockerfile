# fedtune: one static binary in an empty image, running as a non-root user.
#   docker build -t fedtune .
#   docker run --rm fedtune version
# The default image has no shell and no Python, so a worker in it cannot
# use --trainer exec; the exec-worker target adds Debian's python3 and
# NumPy and the reference trainer (examples/external-trainer/train.py):
#   docker build --target exec-worker -t fedtune-exec .
# Coordinators keep their Raft log, snapshots and blobs in /data (a volume);
# see examples/compose for a 3-coordinator, 4-worker cluster.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# SIMD kernels in, as `make build` does (used only where the CPU has them;
# SIMD= builds the pure-Go binary).
ARG SIMD=simd
# CGO_ENABLED=0: a static binary that runs FROM scratch.
RUN GOEXPERIMENT=${SIMD} CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w -X main.buildVersion=${VERSION}" -o /out/fedtune ./cmd/fedtune \
 && /out/fedtune version \
 && mkdir -p /out/data /out/state /out/tmp && chown 65532:65532 /out/data /out/state /out/tmp

# A worker image for --trainer exec: the same binary beside a shell,
# Python 3 with NumPy and the reference script (a lab adds its own stack).
FROM debian:bookworm-slim AS exec-worker
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-numpy && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home fedtune && mkdir -p /state && chown 65532 /state
COPY --from=build /out/fedtune /usr/local/bin/fedtune
COPY examples/external-trainer/train.py /opt/fedtune/train.py
USER 65532:65532
WORKDIR /opt/fedtune
ENV FEDTUNE_STATE_DIR=/state FEDTUNE_TRAINER=exec FEDTUNE_TRAINER_CMD="python3 /opt/fedtune/train.py"
VOLUME ["/state"]
ENTRYPOINT ["/usr/local/bin/fedtune"]
CMD ["worker", "--help"]

# The default image (the last stage).
FROM scratch
COPY --from=build /out/fedtune /fedtune
# Writable directories owned by the runtime user: the coordinator's data
# dir, the worker's state dir, and a temp dir (external trainers' task dirs).
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build --chown=65532:65532 /out/state /state
COPY --from=build --chown=65532:65532 /out/tmp /tmp
USER 65532:65532
ENV TMPDIR=/tmp FEDTUNE_DATA_DIR=/data FEDTUNE_STATE_DIR=/state
VOLUME ["/data", "/state"]
# gRPC, Raft, gossip (TCP and UDP), HTTP (/metrics and the dashboard)
EXPOSE 7070 7071 7946 7946/udp 7072
ENTRYPOINT ["/fedtune"]
CMD ["--help"]
