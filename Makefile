# ImageMesh — `make run` (demo mesh) and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WEIGHTS ?= weights

.PHONY: run serve test bench weights install system-deps proto clean

# The virtual environment, reused until pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[enhance,test,bench,tracing]'
	touch $@

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

install: $(STAMP) system-deps

# A local Redis on a free port, a gateway, two generation workers and an enhance worker, a demo
# batch streamed back as it finishes, then everything stopped.
run: install
	$(BIN)/python -m imagemesh.demo

# The same mesh, left running for the CLI (Ctrl-C stops it).
serve: install
	$(BIN)/python -m imagemesh.demo --keep

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

# The official GFPGAN / Real-ESRGAN / facexlib release files, checked against their sha256.
weights: install
	$(BIN)/python -m enhance_worker.weights download $(WEIGHTS)

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. protos/imagemesh/v1/*.proto

clean:
	rm -rf .pytest_cache .hypothesis build *.egg-info
