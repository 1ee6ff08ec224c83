# ImageMesh — `make run` (demo mesh) and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WEIGHTS ?= weights
# Container images (`make image`); the k8s manifests name the same two.
IMAGE ?= imagemesh
TAG   ?= latest
# buf (proto lint and breaking-change check) comes from npm into .cache/ (git-ignored).
BUF_VERSION := 1.75.0
BUF := .cache/buf/node_modules/.bin/buf

# One virtual environment; each target installs the extras it needs (again when the package
# definition changes): `run` the demo's (server + OpenCV), `test` adds the enhance models and the
# test tools, `bench` the benchmark's.
RUN_EXTRAS   := demo
TEST_EXTRAS  := demo,enhance,test,tracing
BENCH_EXTRAS := demo,enhance,test,tracing,bench

.PHONY: run serve test bench weights install system-deps buf proto proto-baseline wheel image image-cpu image-enhance clean

define install_extras
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(1)]'
	touch $@
endef

$(VENV)/.installed-run: pyproject.toml setup.py
	$(call install_extras,$(RUN_EXTRAS))

$(VENV)/.installed-test: pyproject.toml setup.py
	$(call install_extras,$(TEST_EXTRAS))

$(VENV)/.installed-bench: pyproject.toml setup.py
	$(call install_extras,$(BENCH_EXTRAS))

# redis-server runs the demo and the tests; promtool checks the metrics and alert rules.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: run 'sudo apt-get install -y redis-server'"; exit 1; fi; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool is missing: run 'sudo apt-get install -y prometheus'"; exit 1; fi; }

# Everything a developer uses (the tests' environment).
install: $(VENV)/.installed-test system-deps

# buf for the proto checks in the tests; without npm those tests skip and say so.
buf: $(BUF)
$(BUF):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-save --prefix .cache/buf @bufbuild/buf@$(BUF_VERSION); \
	else echo "npm is missing: the buf proto checks will be skipped (apt-get install nodejs npm)"; fi

# A local Redis on a free port, a gateway, two generation workers and an enhance worker, a demo
# batch streamed back as it finishes, then everything stopped.
run: $(VENV)/.installed-run system-deps
	$(BIN)/python -m imagemesh.demo

# The same mesh, left running for the CLI (Ctrl-C stops it).
serve: $(VENV)/.installed-run system-deps
	$(BIN)/python -m imagemesh.demo --keep

test: $(VENV)/.installed-test system-deps buf
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-bench system-deps
	$(BIN)/python -m bench

# The official GFPGAN / Real-ESRGAN / facexlib release files, checked against their sha256.
weights: $(VENV)/.installed-run
	$(BIN)/python -m enhance_worker.weights download $(WEIGHTS)

# Regenerate the stubs after editing protos/ (grpcio-tools is a test-extra tool, exact version).
proto: $(VENV)/.installed-test
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. protos/imagemesh/v1/*.proto

# At a release: the protos as released become what `buf breaking` (tests/shipping) compares
# against; until the first release the baseline is the API as it was before the check existed.
proto-baseline: buf
	$(BUF) build --exclude-source-info -o protos/baseline.binpb

# The wheel (client + CLI; the server parts come with extras), into dist/. build/ first goes:
# setuptools would pack files left there by an earlier build.
wheel: $(VENV)/.installed-run
	rm -rf build
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

# Container images: the CPU one (gateway, generation worker, CLI) and the CUDA enhance worker.
image: image-cpu image-enhance

image-cpu:
	docker build --file Dockerfile --tag $(IMAGE):$(TAG) .

image-enhance:
	docker build --file Dockerfile.enhance --tag $(IMAGE)-enhance:$(TAG) .

clean:
	rm -rf .pytest_cache .hypothesis build dist *.egg-info
