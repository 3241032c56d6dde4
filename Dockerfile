# One image for every role of the service: `docker run rakuten-stream <subcommand>`
# (worker, retrain-worker, replay, init-db, publish, results, lag, ...).
#
#   docker build -t rakuten-stream .                                # all roles (training extra)
#   docker build -t rakuten-stream:worker --build-arg EXTRAS=dev .  # no torch: a much smaller worker image
#
# Configuration comes from RAKUTEN_* environment variables (see rakuten_stream/settings.py).
FROM python:3.11-slim

ARG EXTRAS=training

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
    && useradd --create-home --uid 10001 rakuten \
    && mkdir -p /var/lib/rakuten/models /var/lib/rakuten/reports \
    && chown -R rakuten:rakuten /var/lib/rakuten

WORKDIR /app
# README.m[d]: copied when present (the glob lets the build go on without it)
COPY pyproject.toml README.m[d] ./
COPY schemas ./schemas
COPY rakuten_stream ./rakuten_stream
COPY producers ./producers
COPY stream_workers ./stream_workers
COPY training ./training
COPY rakuten_cli ./rakuten_cli

# the whole install in one layer; torch comes with the training extra (pinned in pyproject.toml)
RUN pip install --no-compile ".[${EXTRAS}]" \
    && rakuten-stream --help > /dev/null

USER rakuten
VOLUME ["/var/lib/rakuten/models"]
EXPOSE 9108
ENTRYPOINT ["rakuten-stream"]
CMD ["--help"]
