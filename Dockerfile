# syntax=docker/dockerfile:1
# CodeSherpa image: the service, its zygote, the data-science stack the policies
# preload (numpy, pandas, matplotlib) and the toolbox sessions import when they need it.  One service process per container: sessions
# live in its memory.  What holds inside a default container, and what the compose file
# and the Kubernetes manifests do about the rest: docs/deploy.md, "Inside a container".
#
#   docker build -t codesherpa .
#
# Pin the base by digest in production (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with every dependency ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/codesherpa
WORKDIR /src
# The same versions as every other install, each checked against its hashes; the
# runtime stage runs the project itself from /app, where service/ finds .well-known/.
# toolbox.lock is runtime.lock's pins plus the `toolbox` extra (scipy, scikit-learn,
# seaborn, statsmodels, openpyxl, pyarrow, ...): sessions import them, the zygote does
# not preload them.  `--build-arg LOCK=runtime.lock` builds an image without them.
ARG LOCK=toolbox.lock
COPY requirements/runtime.lock requirements/toolbox.lock ./
RUN /opt/codesherpa/bin/pip install --require-hashes -r "${LOCK}" \
 && /opt/codesherpa/bin/python -m compileall -q /opt/codesherpa

# --- runtime -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# libseccomp2: the seccomp layer loads it through pyseccomp.
# tini: PID 1 in pods, which have no `init: true`; it reaps processes orphaned by a
#   killed session (`-s` keeps it working under Docker's own init too).
# file, unzip: programs of the policies' command allowlist that slim images lack
#   (the rest are in coreutils, grep, sed, mawk, findutils, diffutils, tar and gzip).
RUN apt-get update \
 && apt-get install --yes --no-install-recommends libseccomp2 tini file unzip \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/codesherpa /opt/codesherpa
WORKDIR /app
COPY sandbox ./sandbox
COPY service ./service
COPY .well-known ./.well-known
COPY policies ./policies
# Bytecode is compiled now: the root filesystem is read-only at run time.
RUN /opt/codesherpa/bin/python -m compileall -q /app/sandbox /app/service

# A fixed uid, so the compose file, the manifests and a tokens file on the host can name
# it.  The home and state directories are the only places it owns.
RUN groupadd --system --gid 10001 codesherpa \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/codesherpa --shell /usr/sbin/nologin codesherpa \
 && install --directory --owner 10001 --group 10001 --mode 0711 /var/lib/codesherpa

# No secret here: bearer tokens come from CODESHERPA_TOKENS_FILE, a file the compose
# file or the pod mounts under /run/secrets; never from an environment variable, which
# the processes of the same uid could read.
ENV PATH=/opt/codesherpa/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CODESHERPA_POLICY=/app/policies/container.toml \
    CODESHERPA_STATE_DIR=/var/lib/codesherpa

# Not root: without CAP_SYS_ADMIN a root service gains nothing from being root in a
# container but a larger attack surface; the container policy needs no privilege.
USER 10001:10001
EXPOSE 8000

# Liveness only: /readyz (every layer and the zygote) is for the orchestrator's
# readiness checks, which must not restart a container that is merely busy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2).status != 200)"]

ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
# One uvicorn worker (the CLI never starts more): sessions live in this process, and
# a second worker would be a second, separate set of sessions behind one port.
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
