# One image for every role of the service: `docker run rakuten-stream:0.1.0 <subcommand>`
# (worker, train, retrain-worker, drift-consumer, serve, replay, init-db, publish, results, lag, ...).
#
#   docker build -t rakuten-stream:0.1.0 .                                    # every role, CPU torch
#   docker build -t rakuten-stream:0.1.0-worker --build-arg EXTRAS=train .    # no torch: a small worker image
#   docker build -t rakuten-stream:0.1.0-cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .  # training on a GPU
#
# The tag is the project's version (pyproject.toml); the compose file and the Kubernetes manifests
# name it, never `latest`. Configuration comes from RAKUTEN_* environment variables
# (rakuten_stream/settings.py). The container runs as the unprivileged user 10001.
FROM python:3.11-slim

# `training` = the `train` and `deep` extras (torch, transformers for the e5 and image models)
ARG EXTRAS=training,drift,serve
# where torch comes from when EXTRAS needs it: the CPU build by default (about 1 GB less than
# PyPI's CUDA build); a CUDA index of download.pytorch.org for a GPU image
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAKUTEN_MODEL_DIR=/var/lib/rakuten/models \
    RAKUTEN_REPORT_DIR=/var/lib/rakuten/reports \
    RAKUTEN_METRICS_PORT=9108

# libgomp: OpenMP runtime of onnxruntime and torch on slim images
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rakuten \
    && useradd --create-home --uid 10001 --gid 10001 rakuten \
    && mkdir -p /var/lib/rakuten/models /var/lib/rakuten/reports \
    && chown -R 10001:10001 /var/lib/rakuten

WORKDIR /app
# README.m[d]: copied when present (the glob lets the build go on without it)
COPY pyproject.toml README.m[d] ./
COPY schemas ./schemas
COPY rakuten_stream ./rakuten_stream
COPY inference ./inference
COPY producers ./producers
COPY stream_workers ./stream_workers
COPY training ./training
COPY http_service ./http_service
COPY rakuten_cli ./rakuten_cli

# the whole install in one layer; torch first (same bound as the `deep` extra) so that pip keeps
# that build instead of taking PyPI's CUDA one
RUN case ",${EXTRAS}," in \
        *,training,*|*,deep,*) pip install --no-compile --index-url "${TORCH_INDEX_URL}" "torch>=2.5,<3" ;; \
    esac \
    && pip install --no-compile ".[${EXTRAS}]" \
    && rakuten-stream --help > /dev/null

# numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd
USER 10001:10001
VOLUME ["/var/lib/rakuten/models"]
EXPOSE 9108 8000
ENTRYPOINT ["rakuten-stream"]
CMD ["--help"]
