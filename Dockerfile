# syntax=docker/dockerfile:1
#
# kallm container image: the OpenAI-compatible proxy with a semantic cache.
#
#   docker build -t kallm .
#   docker run --rm -p 127.0.0.1:8080:8080 -e OPENAI_API_KEY -v kallm-data:/data \
#       --stop-timeout 45 kallm
#
# Releases are published as ghcr.io/kallm/kallm:<version>, the Helm chart's default image;
# to publish your own: docker build -t <registry>/<owner>/kallm:<version> . && docker push
# <registry>/<owner>/kallm:<version>. For kind: docker build -t kallm:dev . && kind load
# docker-image kallm:dev (the chart then with image.pullPolicy=Never). deploy/README.md.
#
# Stage 1 builds wheels for kallm and every dependency; stage 2 installs them, offline,
# into a slim runtime that has no compiler, no build tools and no curl.
#
# On SIGTERM kallm finishes in-flight requests (up to 30 s) and then writes its cache
# snapshot to /data, so give it more than Docker's default 10 s to stop
# (`--stop-timeout 45`; docker-compose.yml sets stop_grace_period).

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kallm ./kallm
RUN pip wheel --no-cache-dir --wheel-dir /wheels .


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="kallm" \
      org.opencontainers.image.description="OpenAI-compatible LLM proxy with a semantic cache" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volume
# permissions are predictable. /data holds the cache snapshot and the SQLite database.
RUN groupadd --system --gid 10001 kallm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/kallm --create-home \
       --shell /usr/sbin/nologin kallm \
    && mkdir -p /data \
    && chown 10001:10001 /data

# Install from the wheels built above only (no index), without copying them into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/kallm-*.whl

# The cache snapshot and the SQLite database (keys, spend, request log) live in /data.
ENV KALLM_HOST=0.0.0.0 \
    KALLM_PORT=8080 \
    KALLM_CACHE_FILE=/data/cache.kallm \
    KALLM_DB=/data/kallm.db

USER 10001:10001
WORKDIR /home/kallm
VOLUME /data
EXPOSE 8080

# No curl in the slim image: python's urllib fails (exit 1) on any error or non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('KALLM_PORT', '8080'), timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["kallm", "serve"]
