# archsearch — the two commands a newcomer types are `make demo` and `make test`.
#
# torch is pinned to a CPU build here (TORCH_VERSION; this machine has that wheel on
# disk). On a GPU node install the CUDA build first, then the project, e.g.
#   make venv TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (any CUDA wheel index that carries the version; see README "GPU nodes").

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.archsearch-installed
PYTEST_ARGS ?=
BENCH ?=

.PHONY: venv test lint demo bench clean help

help:
	@echo "make demo   set up, then run an end-to-end search on the embedded defaults"
	@echo "make test   set up, then run the whole test suite (PostgreSQL when reachable)"
	@echo "make lint   ruff check + format check"
	@echo "make bench  run the benchmarks in bench/ and append to bench/RESULTS.md"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: venv
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# DEMO_ARGS="--no-serve" exits after the leaderboard instead of serving the dashboard.
DEMO_ARGS ?=
demo: venv
	$(BIN)/archsearch demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
