# Saga push. `make run` starts the service in embedded mode; `make test` runs
# every test (Postgres at 127.0.0.1:5432 and Debian's chromium are needed;
# see README).
GO ?= go
BIN := bin/sagapush

.PHONY: build run test test-short lint fuzz bench clean

build:
	$(GO) build -o $(BIN) .

run: build
	./$(BIN) serve

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

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
