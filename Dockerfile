# CodeSherpa image: the service, its zygote and the data-science stack the default
# policy preloads.  Hardening notes for reviewers are in SECURITY.md and the README.

# --- build: a wheel of the project and every dependency ---------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sandbox ./sandbox
COPY service ./service
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime -----------------------------------------------------------------------
FROM python:3.11-slim
# libseccomp2: loaded by pyseccomp; util-linux: nothing at run time, kept out.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
WORKDIR /app
COPY policies ./policies
COPY .well-known ./.well-known
# No secret is baked in: tokens come from CODESHERPA_TOKENS_FILE (a mounted secret).
ENV CODESHERPA_POLICY=/app/policies/default.toml \
    CODESHERPA_STATE_DIR=/var/lib/codesherpa \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --home-dir /var/lib/codesherpa --create-home codesherpa
USER codesherpa
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez').status != 200)"
# One uvicorn worker per container: sessions live in this process.
CMD ["codesherpa", "serve", "--host", "0.0.0.0", "--port", "8000"]
