# stagecast: `make help` lists the targets.
GO        ?= go
BIN       := bin/stagecast
SUDO      := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Packages with concurrency run under the race detector; all run in `make test`.
PKGS      := ./...
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# podman as these machines run it (../shared/libraries.md): runc, cgroupfs, no ulimits
PODMAN    := CONTAINERS_CONF=$(CURDIR)/deploy/image/containers.conf podman --runtime runc --cgroup-manager cgroupfs
# staticcheck, pinned (fetched by `go run` from the module proxy on first use)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.DEFAULT_GOAL := help
.PHONY: help build run cluster image test sdk-test deps bench bench-sdk bench-micro bench-fanout bench-prefetch bench-notify fuzz vet clean

help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/stagecast
	$(GO) build -o $(BIN) ./cmd/stagecast

run: build ## all-in-one dev server (in-memory engine, no Redis): proxy :8080, broadcaster :8081
	./$(BIN) dev

cluster: build deps ## supervised local fleet: Redis Cluster 7001-7006, broadcaster :9100, proxies :9101-9103, prefetch :9111-9112; control.json for faults (Ctrl-C stops all); CLUSTER_FLAGS=--require-device-token as production
	@[ -n "$$STAGECAST_PRODUCER_TOKEN" ] || { echo "set STAGECAST_PRODUCER_TOKEN first, e.g. export STAGECAST_PRODUCER_TOKEN=$$(openssl rand -hex 24)"; exit 1; }
	$(GO) build -o bin/localcluster ./cmd/localcluster
	./bin/localcluster --stagecast $(BIN) $(CLUSTER_FLAGS)

image: deps ## the container image stagecast:$(VERSION) without a registry: a static binary (no plotting: -tags nocharts) in a scratch image, non-root (podman)
	@mkdir -p out/image
	CGO_ENABLED=0 $(GO) build -tags nocharts -trimpath -ldflags="-s -w" -o out/image/stagecast ./cmd/stagecast
	cp /etc/ssl/certs/ca-certificates.crt deploy/image/passwd deploy/image/group deploy/image/Containerfile out/image/
	$(PODMAN) build -q -t stagecast:$(VERSION) -f out/image/Containerfile out/image
	@$(PODMAN) image inspect --format 'stagecast:$(VERSION): {{.Size}} bytes, user {{.Config.User}}' stagecast:$(VERSION)

deps: ## install what the tests need (redis-server, chromium, podman and runc via apt-get when missing)
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package) for the Redis tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the console's browser tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 || { \
	  echo "installing podman and runc (Debian packages) for the image test"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends podman runc >/dev/null; }
	@redis-server --version
	@chromium --version 2>/dev/null

vet: ## go vet, staticcheck and gofmt check
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }

test: deps vet ## everything the tests need, then every test, with -race (timing tests without it), then the TypeScript SDK's
	$(GO) test -race -count=1 -timeout 8m $(PKGS)
	$(GO) test -count=1 -timeout 3m -run 'TestSimulatorCalibration' ./internal/e2e
	$(GO) test -count=1 -timeout 8m -run 'TestGameDayFaults|TestNetworkFaults|TestSplitBrain' ./internal/localcluster
	$(MAKE) sdk-test

sdk-test: build ## the TypeScript SDK (sdk/js): npm ci, build, typecheck, codegen check, Node and Chromium tests against bin/stagecast
	@command -v node >/dev/null 2>&1 && node -e 'process.exit(+process.versions.node.split(".")[0] < 20 ? 1 : 0)' || { \
	  echo "the SDK tests need Node.js 20 or newer with npm (Debian's nodejs package is older)"; exit 1; }
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error && npm test

fuzz: ## fuzz the device frame decoder and the device token verifier, 30s each
	$(GO) test ./internal/wire -run XXX -fuzz FuzzParseDeviceFrame -fuzztime 30s
	$(GO) test ./internal/devicetoken -run XXX -fuzz FuzzVerify -fuzztime 30s

bench: bench-micro bench-fanout bench-prefetch bench-notify ## all benchmarks (see docs/benchmarks.md)

bench-micro: ## Go micro-benchmarks (encode, decode, in-process fanout, device token verification)
	$(GO) test -run XXX -bench . -benchmem -count 5 ./internal/wire ./internal/devicetoken

bench-fanout: build deps ## loopback fanout: 1 proxy x 10k and 19k, 3 proxies x 15k via Redis, plus the raw-TCP floor
	$(GO) build -o bin/fanoutbench ./cmd/fanoutbench
	./bin/fanoutbench --stagecast $(BIN) --out out/bench

bench-notify: build deps ## notifications on loopback: Redis, broadcaster, 2 proxies, 20k devices of 10k members in 2 client processes
	$(GO) build -o bin/notifybench ./cmd/notifybench
	./bin/notifybench --stagecast $(BIN) --batch 100 --out out/bench/notify

bench-sdk: build ## the TypeScript SDK: 1,000 clients in one Node process on a real stagecast dev
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error && npm run bench

bench-prefetch: build ## prefetch on cache hits: plain JSON vs GraphQL POST and GET, side by side; then the same with the analytics stream on
	$(GO) build -o bin/prefetchbench ./cmd/prefetchbench
	./bin/prefetchbench --stagecast $(BIN) --out out/bench
	./bin/prefetchbench --stagecast $(BIN) --analytics --out out/bench/analytics

clean: ## remove build output
	rm -rf bin out
