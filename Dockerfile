# The Stepflow image: the worker (default command) and the `stepflow` CLI, codec server included.
#
#   docker build -t stepflow .
#   docker run --rm -e TEMPORAL_ADDRESS=temporal.internal:7233 stepflow
#
# docker-compose.yml builds it for its `worker` and `codec-server` services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in a layer of their own, so a code change doesn't reinstall them. The `s3`
# extra is included: switching the payload store to S3 is then a setting, not a rebuild.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (not editable): the `stepflow` package, whose subpackages are links to the
# folders below, and worker.py.
COPY stepflow/ stepflow/
COPY workflows/ workflows/
COPY activities/ activities/
COPY client/ client/
COPY runtime/ runtime/
COPY worker.py ./
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# The example pipelines and tools (STEPFLOW_TOOL_MODULES=examples.tools), importable from /app
# (STEPFLOW_IMPORT_PATH below) by the worker and the `stepflow` command alike.
COPY examples/ examples/

# Unprivileged. /data holds the payload store and the file tools' workspace; a named volume
# mounted there starts with this ownership.
RUN groupadd --gid 10001 stepflow \
    && useradd --uid 10001 --gid stepflow --no-create-home --home-dir /data stepflow \
    && mkdir -p /data/payloads /data/workspace \
    && chown -R stepflow:stepflow /data
# The root filesystem is read-only in the compose stack: what libraries cache under $HOME
# goes to the tmpfs.
ENV HOME=/tmp \
    STEPFLOW_IMPORT_PATH=/app \
    STEPFLOW_HOME=/data \
    STEPFLOW_PAYLOAD_DIR=/data/payloads \
    STEPFLOW_WORKSPACE=/data/workspace \
    STEPFLOW_LOG_FORMAT=json
USER stepflow

# `docker stop` sends SIGTERM: the worker stops polling and gives running activities 10 s.
CMD ["python", "worker.py"]
