# The search image: the `search` command on Python 3.11 and Debian 12, with Debian's
# Fashion-MNIST package, so a worker needs no download. docker-compose.yml runs it as the
# workers and the dashboard.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 search \
    && mkdir /data && chown search:search /data

WORKDIR /app
# Dependencies first, so a code change does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir search && touch search/__init__.py \
    && pip install --no-cache-dir -e . && rm -rf search
COPY search ./search
COPY studies ./studies

# Presets are read from /app/studies beside the package: hence the editable install.
ENV SEARCH_DIR=/data PYTHONUNBUFFERED=1
USER search
VOLUME /data
CMD ["search", "--help"]
