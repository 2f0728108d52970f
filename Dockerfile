# syntax=docker/dockerfile:1
# The API image; the workers and the one-shot migration run the same image
# with another command (docker-compose.yml).
ARG PYTHON_VERSION=3.11

# -- build: a wheel for every pinned dependency --------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a prebuilt wheel; none of
# this reaches the final image.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential libpq-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY requirements.txt .
# BuildKit keeps pip's download cache between builds, so a changed pin fetches
# only what changed.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels -r requirements.txt

# -- runtime: the wheels, the code, a non-root user ----------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8000 \
    INSTANCE_PATH=/app/instance \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY requirements.txt .
# Installed from the build stage's wheels only (no index, no compiler); the
# wheels are mounted, not copied, so they add nothing to the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels -r requirements.txt
COPY service/ service/
COPY workers/ workers/
COPY migrations/ migrations/
COPY scripts/ scripts/
COPY wsgi.py gunicorn.conf.py ./
RUN mkdir -p /app/instance && chown app:app /app/instance
USER app
EXPOSE 8000
# Liveness only: /healthz answers while the process serves (readiness, which
# needs PostgreSQL and Redis, is /readyz for a load balancer).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
