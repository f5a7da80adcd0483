# archsearch — the two commands a newcomer types are `make demo` and `make test`.
#
# torch is pinned to a CPU build here (TORCH_VERSION; this machine has that wheel on
# disk). On a GPU node install the CUDA build first, then the project, e.g.
#   make venv TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (any CUDA wheel index that carries the version; see README "GPU nodes").
#
# Everything else installs at the exact versions of constraints.txt (the ones the suite
# last passed with; pyproject.toml keeps its ranges). `make lock` refreshes that file.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.archsearch-installed
PYTEST_ARGS ?=
BENCH ?=

.PHONY: venv test test-fast lint demo bench lock clean help

help:
	@echo "make demo       set up, then run an end-to-end search on the embedded defaults"
	@echo "make test       set up, then run the whole test suite (PostgreSQL when reachable)"
	@echo "make test-fast  the unit tests only (no slow, end-to-end or browser tests): ~2 min"
	@echo "make lint       ruff check + format check"
	@echo "make bench      run the benchmarks in bench/ and append to bench/RESULTS.md"
	@echo "make lock       re-resolve constraints.txt (the exact versions installed)"

# torch from PyPI (no TORCH_INDEX) installs under constraints.txt, its dependencies too; a
# TORCH_INDEX may not carry those exact versions, so there torch comes first as the index
# has it and the second line moves its dependencies to constraints.txt's versions.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),-c constraints.txt) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
PYTEST = @$(BIN)/python -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: venv
	$(call PYTEST,)

# The unit tests: what the markers slow (more than a few seconds: the fault suite,
# schemathesis, the concurrency tests), e2e (real coordinator / worker / demo processes)
# and browser (headless Chromium) leave. PostgreSQL tests stay in when it is reachable.
test-fast: venv
	$(call PYTEST,-m "not slow and not e2e and not browser")

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# DEMO_ARGS="--no-serve" exits after the leaderboard instead of serving the dashboard.
DEMO_ARGS ?=
demo: venv
	$(BIN)/archsearch demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bench]"
	$(BIN)/python -m bench $(BENCH)

# Refresh constraints.txt on purpose (a dependency's fix, a new release to adopt): in a
# throwaway venv, install torch by TORCH_SPEC and the project with its dev and bench
# extras at the newest releases pyproject.toml's ranges allow, and write what pip froze.
# torch (pinned above, by TORCH_VERSION) and the CUDA-only nvidia-* / triton wheels stay
# out. LOCK_FROM=<a pip freeze file> keeps that file's versions instead of the newest,
# e.g. `.venv/bin/pip freeze > /tmp/f.txt; make lock LOCK_FROM=/tmp/f.txt`. Afterwards:
# `make test` (the venv reinstalls: its stamp depends on constraints.txt), then commit.
LOCK_FROM ?=
LOCK_SKIP := ^(torch|triton|nvidia-[a-z0-9-]+)(==| @)
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	touch "$$tmp/from.txt"; \
	$(if $(LOCK_FROM),grep -viE '$(LOCK_SKIP)' "$(LOCK_FROM)" > "$$tmp/from.txt" || true;) \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q -c "$$tmp/from.txt" \
	    $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; \
	"$$tmp/venv/bin/python" -m pip install -q -c "$$tmp/from.txt" -e ".[dev,bench]"; \
	{ echo "# Exact versions for 'pip install -c constraints.txt' (the Makefile, CI)."; \
	  echo "# Written by 'make lock' (see the Makefile); torch is pinned by TORCH_VERSION."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '$(LOCK_SKIP)'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pins; now run make test"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
