# make run   - set up and start the admin (http://127.0.0.1:$(PORT)/admin/) plus one worker
# make test  - set up and run the whole suite (SQLite, PostgreSQL, PgBouncer, MariaDB when their binaries exist;
#              in two lanes side by side, TEST_LANES)
# make lint  - ruff
# make bench - the benchmark against the peer queues
# make chaos - the fault test: workers on several hosts, partitions, kills, database restarts
# make docs  - the documentation site (docs/ -> docs/_build/html), every warning an error

PORT ?= 8000
VENV ?= .venv

# The newest Python 3.12+ on PATH, then in pyenv; else python3 (3.11 gets Django 5.2 + backport).
ifndef PYTHON
PYTHON := $(shell \
	for v in 3.14 3.13 3.12; do \
		p=$$(command -v python$$v 2>/dev/null) && "$$p" -c1 2>/dev/null && { echo "$$p"; exit 0; }; \
	done; \
	root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
	for p in $$(ls -d "$$root"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V -r); do \
		"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo "$$p"; exit 0; }; \
	done; \
	command -v python3)
endif

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: docs run test test-sqlite test-postgres test-pgbouncer test-mariadb lint bench chaos venv clean chromium

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@if [ -x "$(PY)" ] && [ "$$($(PY) -c 'import sys; print(sys.base_prefix)')" != "$$($(PYTHON) -c 'import sys; print(sys.base_prefix)')" ]; then \
		echo "Python changed: recreating $(VENV)"; rm -rf "$(VENV)"; fi
	@echo "Using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	$(PY) manage.py enqueue_examples
	@echo "Admin: http://127.0.0.1:$(PORT)/admin/  (Ctrl-C stops the web server and the worker)"
	@$(PY) manage.py serve --port $(PORT)

# The admin's end-to-end test drives Debian's chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's chromium for the browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "WARNING: chromium is missing; the browser test will fail (apt-get install chromium)" >&2; fi; }

# The suites in lanes side by side, the suites of a lane one after another (a lane: a quoted list).
# Every suite starts its own servers on free ports in temp dirs, so no two share a server. Each
# suite's output goes to test-artifacts/logs/<suite>.log; at the end one summary line per suite and
# the whole log of every suite that failed (scripts/test_lanes.sh). TEST_LANES=sqlite postgres ...
# (one suite per lane) or TEST_LANES='"sqlite postgres pgbouncer mariadb"' (one after another).
TEST_LANES ?= "sqlite mariadb" "postgres pgbouncer"
test: $(STAMP) chromium
	@start=$$(date +%s); \
	MAKE="$(MAKE)" bash scripts/test_lanes.sh $(TEST_LANES); \
	rc=$$?; echo "make test: $$(( $$(date +%s) - start ))s, exit $$rc"; exit $$rc

test-sqlite: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# PostgreSQL binaries missing: skipped with a message, unless REQUIRE_POSTGRES=1 makes it an error.
test-postgres: $(STAMP)
	@if $(PY) -m tests.pgserver --available; then \
		$(PY) -m pytest --ds=tests.settings_postgres $(PYTEST_ARGS); \
	elif [ "$(REQUIRE_POSTGRES)" = "1" ]; then \
		echo "ERROR: REQUIRE_POSTGRES=1 but no PostgreSQL server binaries (initdb, pg_ctl) were found" >&2; exit 1; \
	else \
		echo "SKIPPED: the PostgreSQL suite (no server binaries found; install Debian's postgresql)"; \
	fi

# The process tests again with every worker behind a real PgBouncer in transaction pooling
# (tests/settings_pgbouncer.py). Needs PostgreSQL's binaries and Debian's pgbouncer; required with
# REQUIRE_POSTGRES=1, like the PostgreSQL suite.
PGBOUNCER_TESTS = tests/test_pooler.py tests/test_processes.py tests/test_supervisor.py tests/test_job_control.py \
	tests/test_cancel_progress.py
test-pgbouncer: $(STAMP)
	@if $(PY) -m tests.pgserver --available && $(PY) -m tests.pgbouncer --available; then \
		$(PY) -m pytest --ds=tests.settings_pgbouncer $(PGBOUNCER_TESTS) $(PYTEST_ARGS); \
	elif [ "$(REQUIRE_POSTGRES)" = "1" ]; then \
		echo "ERROR: REQUIRE_POSTGRES=1 but PostgreSQL's binaries or pgbouncer were not found (Debian: postgresql, pgbouncer)" >&2; exit 1; \
	else \
		echo "SKIPPED: the PgBouncer run (install Debian's postgresql and pgbouncer)"; \
	fi

# MariaDB binaries missing: skipped with a message, unless REQUIRE_MARIADB=1 makes it an error.
test-mariadb: $(STAMP)
	@if $(PY) -m tests.mariadbserver --available; then \
		$(PY) -m pytest --ds=tests.settings_mariadb $(PYTEST_ARGS); \
	elif [ "$(REQUIRE_MARIADB)" = "1" ]; then \
		echo "ERROR: REQUIRE_MARIADB=1 but no MariaDB server binaries (mariadbd, mariadb-install-db) were found" >&2; exit 1; \
	else \
		echo "SKIPPED: the MariaDB suite (no server binaries found; install Debian's mariadb-server)"; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .

# Sphinx + MyST + Furo; requirements-docs.txt is installed into the project venv on first use.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) requirements-docs.txt
	$(PY) -m pip install --quiet -r requirements-docs.txt
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	@start=$$(date +%s); \
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html; \
	rc=$$?; echo "make docs: $$(( $$(date +%s) - start ))s, exit $$rc (docs/_build/html/index.html)"; exit $$rc

# BENCH_ARGS=--quick (a smoke run) or --full (about an hour); bench/README.md has the rest.
# The clock starts before the venv is (re)built, so the total includes it.
bench:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory venv && $(PY) -m bench $(BENCH_ARGS); \
	rc=$$?; echo "make bench: $$(( $$(date +%s) - start ))s including the venvs, exit $$rc"; exit $$rc

# CHAOS_SECONDS of faults (then the drain), CHAOS_SEED (default: a random one, printed),
# CHAOS_WORKERS hosts with one worker each, CHAOS_DB postgres (default) or mariadb. Needs root for the network namespaces (else
# loopback, without partitions, and it says so). Exit 0 only when no invariant broke.
CHAOS_SECONDS ?= 120
CHAOS_WORKERS ?= 6
CHAOS_SEED ?=
CHAOS_DB ?= postgres
chaos:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory venv && $(PY) -m chaos --seconds $(CHAOS_SECONDS) --workers $(CHAOS_WORKERS) \
		--db $(CHAOS_DB) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)); \
	rc=$$?; echo "make chaos: $$(( $$(date +%s) - start ))s, exit $$rc" >&2; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .chaos docs/_build
