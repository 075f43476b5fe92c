# The search image: the `search` command on Python 3.11 and Debian 12, with Debian's
# Fashion-MNIST package, so a worker needs no download. docker-compose.yml and
# deploy/kubernetes/ run it as the workers and the dashboard:
#   docker build -t search:latest .
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 search \
    && mkdir /data && chown search:search /data

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
        print("\n".join(project["dependencies"]))' > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
# Then the package as a wheel, installed as any user installs it: the shipped presets travel
# inside it (search/studies/), and nothing is read from the source tree, which goes.
COPY search ./search
COPY studies ./studies
RUN pip wheel --no-cache-dir --no-deps -w /tmp/wheels . \
    && pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /src

# /data holds the SQLite storage and saved models (SEARCH_DIR); a folder mounted at
# /data/studies adds presets by name, as ./studies does anywhere.
WORKDIR /data
ENV SEARCH_DIR=/data PYTHONUNBUFFERED=1
USER search
VOLUME /data
CMD ["search", "--help"]
