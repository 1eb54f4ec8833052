# Saga push. `make run` starts the service in embedded mode; `make test` runs
# every test (Postgres at 127.0.0.1:5432 and Debian's chromium are needed;
# see README).
GO ?= go
BIN := bin/sagapush

.PHONY: typecheck pack rules build run test test-short lint fuzz bench clean dist

build:
	$(GO) build -buildvcs=auto -o $(BIN) .

run: build
	./$(BIN) serve

test: typecheck pack rules
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

# The browser client as an npm package (web/package.json) and a strict
# TypeScript check of an example program against its types
# (web/typecheck). They need Node.js and npm: without them they are skipped,
# except under CI=true, where that fails.
NPM_MISSING = { if [ "$$CI" = true ]; then echo "$@: npm is required (apt-get install nodejs npm; .ci/run installs it)"; exit 1; fi; echo "$@: skipped: no npm"; exit 0; }

# Each recipe is one shell line: NPM_MISSING's exit 0 must end all of it.
typecheck:
	@command -v npm >/dev/null || $(NPM_MISSING); \
		cd web/typecheck && npm ci --no-audit --no-fund --silent && npx --no-install tsc -p .

pack:
	@command -v npm >/dev/null || $(NPM_MISSING); \
	d=$$(mktemp -d) && cd web && npm pack --silent --pack-destination "$$d" >/dev/null && \
		tar -tzf "$$d"/*.tgz | sort | tr '\n' ' ' | grep -q '^package/client.d.ts package/client.js package/package.json $$' && \
		echo "pack: $$(ls "$$d") holds client.js, client.d.ts, package.json" && rm -rf "$$d"

# The alert rules (deploy/prometheus-alerts.yml) are valid and pass their
# tests (deploy/prometheus-alerts.test.yml). They need promtool, of Debian's
# prometheus package: without it they are skipped, except under CI=true,
# where that fails.
PROMTOOL_MISSING = { if [ "$$CI" = true ]; then echo "$@: promtool is required (apt-get install prometheus; .ci/run installs it)"; exit 1; fi; echo "$@: skipped: no promtool"; exit 0; }

# One shell, so that the skip's exit ends the recipe.
rules:
	@command -v promtool >/dev/null || $(PROMTOOL_MISSING); \
		promtool check rules deploy/prometheus-alerts.yml && promtool test rules deploy/prometheus-alerts.test.yml

test-short:
	$(GO) test -race -count=1 -short ./...

# lint also checks the module on macOS and Windows, where build-tagged files
# (internal/sock's portable twins, bench's) take Linux's place: each of
# them builds, vets and passes staticcheck (run as a host binary). go.mod and
# go.sum must be tidy.
CROSS := darwin/arm64 windows/amd64

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@set -e; sc=$$($(GO) tool -n staticcheck); for p in $(CROSS); do \
		echo "GOOS=$${p%/*} GOARCH=$${p#*/}: build, vet, staticcheck"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build ./...; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) vet ./...; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $$sc ./...; \
	done

# Fuzz what clients send before anything else checks it, each target for a
# while (go test fuzzes one target per run; the seed corpora run in make
# test): the client-frame decoder, the SSE query and the ticket of ?ticket=.
fuzz:
	$(GO) test ./internal/protocol -run '^$$' -fuzz '^FuzzDecodeClientFrame$$' -fuzztime 30s
	$(GO) test ./internal/protocol -run '^$$' -fuzz '^FuzzSSEQuery$$' -fuzztime 25s
	$(GO) test ./internal/session -run '^$$' -fuzz '^FuzzTicketHash$$' -fuzztime 25s

bench: build
	$(GO) run ./bench -out bench/results $(BENCH_ARGS)

clean:
	rm -rf bin

# Release binaries: static (no cgo), stripped, with the commit they were
# built from (sagapush version), for linux/amd64 and linux/arm64 in dist/.
# The host's own one is run to show its version.
DIST := linux/amd64 linux/arm64

dist:
	@set -e; mkdir -p dist; for p in $(DIST); do \
		out=dist/sagapush-$${p%/*}-$${p#*/}; \
		CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -buildvcs=auto -ldflags='-s -w' -o $$out .; \
		echo "$$out"; \
	done
	@host=dist/sagapush-$$($(GO) env GOOS)-$$($(GO) env GOARCH); if [ -x $$host ]; then $$host version; fi
