# syntax=docker/dockerfile:1
#
# The orchestrator daemon. Build it, then build your app's image FROM it:
#
#   docker build -t orchestrator .
#
#   # your Dockerfile
#   FROM orchestrator
#   COPY --chown=orchestrator:orchestrator requirements.txt /app/
#   RUN pip install -r /app/requirements.txt
#   COPY --chown=orchestrator:orchestrator myapp/ /app/myapp/
#   CMD ["--app", "myapp.jobs:app"]
#
#   docker run --init --stop-timeout 45 -p 9464:9464 \
#     -e ORCHESTRATOR_DATABASE_URL=postgresql://app:secret@db:5432/app myapp-image
#
# Stopping: the daemon drains on SIGTERM for up to shutdown_grace (30 s by default), then
# releases what is left. Docker's default stop timeout is 10 s: give it more
# (`--stop-timeout 45`, compose `stop_grace_period: 45s`, Kubernetes
# `terminationGracePeriodSeconds: 45`) or lower ORCHESTRATOR_SHUTDOWN_GRACE below it.
# `--init` puts a minimal init in front, so any orphaned process is reaped.

ARG PYTHON_VERSION=3.11

# -- build: the package and its runtime dependencies in a virtualenv ----------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/orchestrator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY migrations ./migrations
# not the dev extras: no test or lint tools in the image
RUN /opt/orchestrator/bin/pip install .

# -- runtime -------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid orchestrator --no-create-home \
       --home-dir /var/lib/orchestrator --shell /usr/sbin/nologin orchestrator \
    && mkdir -p /app /var/lib/orchestrator \
    && chown orchestrator:orchestrator /app /var/lib/orchestrator
COPY --from=build /opt/orchestrator /opt/orchestrator

# Your code goes in /app, the working directory, which `--app module:attr` imports from.
# The embedded Postgres (used only when no database URL is set) keeps its data in
# /var/lib/orchestrator/pgdata: mount a volume there if you rely on it.
ENV PATH=/opt/orchestrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORCHESTRATOR_LOG_FORMAT=json \
    ORCHESTRATOR_HTTP_ADDRESS=0.0.0.0:9464 \
    ORCHESTRATOR_EMBEDDED_DATA_DIR=/var/lib/orchestrator/pgdata
WORKDIR /app
USER orchestrator:orchestrator
EXPOSE 9464

# /healthz is 200 while the scheduler loop turns (a database outage does not fail it; see
# /readyz for that). No curl in slim images: Python's urllib does the request, and any
# status other than 200 raises, which fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['ORCHESTRATOR_HTTP_ADDRESS'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["orchestrator", "run"]
