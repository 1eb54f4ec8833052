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

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Fuzz the client-frame decoder for a while (the seed corpus runs in make test).
fuzz:
	$(GO) test ./internal/protocol -run '^$$' -fuzz FuzzDecodeClientFrame -fuzztime 60s

bench: build
	$(GO) run ./bench -out bench/results $(BENCH_ARGS)

clean:
	rm -rf bin
