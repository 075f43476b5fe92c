# The search image: the `search` command on Python 3.11 and Debian 12, with Debian's
# Fashion-MNIST package, so a worker needs no download. docker-compose.yml and
# deploy/kubernetes/ run it as the workers and the dashboard, tagged with the package's version
# (pyproject.toml), so that every node runs the same build:
#   docker build -t search:0.1.0 .
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 search \
    && useradd --create-home --uid 1000 --gid 1000 search \
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
# /data/studies adds presets by name, as ./studies does anywhere. HOME holds ~/.keras and the
# matplotlib cache; both folders belong to the user below.
WORKDIR /data
ENV SEARCH_DIR=/data HOME=/home/search PYTHONUNBUFFERED=1
# By number, not name: Kubernetes' runAsNonRoot can check a number, and the manifests in
# deploy/kubernetes/ name the same one (runAsUser 1000, fsGroup 1000).
USER 1000:1000
VOLUME /data
CMD ["search", "--help"]
