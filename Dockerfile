# The rollout server image: `rollout serve` on port 8000, dependencies from uv.lock.
#
#   docker build -t rollout .
#   docker run --rm -p 127.0.0.1:8000:8000 rollout                       # the calculator agent
#   docker run --rm -p 127.0.0.1:8000:8000 rollout -m mypkg.agent:agent  # another agent
#
# Arguments after the image name are appended to `rollout serve --host 0.0.0.0 --port 8000`.
# The store defaults to SQLite under /var/lib/rollout (mount a volume there to keep it);
# set ROLLOUT_SERVER_STORE=redis://:PASSWORD@HOST:6379/0 to share one Redis between hosts
# (docs/DEPLOYMENT.md).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtual environment with the locked dependencies and the project -------------
FROM ${PYTHON_IMAGE} AS build

# uv from PyPI (the ghcr.io/astral-sh/uv image may be unreachable from the build host);
# the version the lock file was written with.
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/rollout/venv
RUN pip install "uv==${UV_VERSION}"

WORKDIR /build
# Dependencies first, so this layer is reused while only src/ changes. The workspace
# member's pyproject.toml is needed: `uv sync --locked` reads every workspace member to
# check the lock (the dev group names rollout-conformance), even though --no-dev never
# installs it.
COPY pyproject.toml uv.lock ./
COPY conformance/pyproject.toml conformance/pyproject.toml
RUN uv sync --locked --no-dev --extra redis --no-install-project

# Then the project itself, installed as a wheel (not editable): the runtime stage needs
# only the virtual environment.
COPY README.md ./
COPY src ./src
RUN uv sync --locked --no-dev --extra redis --no-editable

# --- runtime: the virtual environment and a non-root user ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 rollout \
    && useradd --system --uid 10001 --gid rollout --home-dir /var/lib/rollout \
        --no-create-home --shell /usr/sbin/nologin rollout \
    && install -d -o rollout -g rollout -m 0700 /var/lib/rollout

# Same path as in the build stage: the scripts in venv/bin name their interpreter by path.
COPY --from=build /opt/rollout/venv /opt/rollout/venv

ENV PATH=/opt/rollout/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ROLLOUT_SERVER_STORE=sqlite:/var/lib/rollout/rollout-store.db

WORKDIR /var/lib/rollout
USER rollout:rollout

EXPOSE 8000
# SIGTERM starts the drain: new inits get 503, unfinished rollouts get --drain-timeout
# (30 s), then are cancelled and their results get up to 15 s to deliver. Give the
# container at least 60 s before SIGKILL (docker stop -t 60, stop_grace_period: 60s).
STOPSIGNAL SIGTERM

# Liveness: /health answers 200 while running and while draining, 503 once the engine
# failed (urlopen raises on it). There is no curl in the slim image. Readiness (not
# draining) is the load balancer's business: see deploy/kubernetes.yaml.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

ENTRYPOINT ["rollout", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
