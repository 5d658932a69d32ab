# syntax=docker/dockerfile:1.7
# The Ray image: Ray Serve apps (collector, recommender, learner), Ray Train jobs and the retrain
# trigger (`python -m streamrec.cli retrain`). One file, two variants from Ray's own images:
#   docker build -f deploy/images/ray.Dockerfile -t streamrec-ray:0.1.0 .
#   docker build -f deploy/images/ray.Dockerfile --build-arg VARIANT=gpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t streamrec-ray:0.1.0-gpu .
# Pin the base by digest when publishing (`rayproject/ray:2.60.0-py311-cpu@sha256:...`); the tag pins
# Ray and Python, which tests/deploy/test_images.py checks against the versions this repo is locked to.
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT} AS ray-base

# 1. wheels: every dependency of the serve and train extras, built once with the exact lock; the
#    compilers this needs stay in this stage.
FROM ray-base AS wheels
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /build
COPY --chown=ray pyproject.toml constraints.txt README.md ./
COPY --chown=ray features features
COPY --chown=ray pipelines pipelines
COPY --chown=ray ray_jobs ray_jobs
COPY --chown=ray serving serving
COPY --chown=ray streamrec streamrec
# torch first and exactly 2.13.0 from the variant's index (the default index serves CUDA wheels).
RUN pip wheel --no-cache-dir --wheel-dir wheels --index-url "${TORCH_INDEX}" "torch==2.13.0" \
 && pip wheel --no-cache-dir --wheel-dir wheels --find-links wheels -c constraints.txt "setuptools>=77" ".[serve,train]"

# 2. runtime: Ray's image, non-root (its user `ray`), the repository at /opt/streamrec (the RayJob
#    entrypoints name /opt/streamrec/ray_jobs/configs/*.yaml) installed from the wheels alone.
FROM ray-base AS runtime
USER root
RUN mkdir -p /opt/streamrec && chown ray:users /opt/streamrec
USER ray
WORKDIR /opt/streamrec
COPY --chown=ray pyproject.toml constraints.txt README.md ./
COPY --chown=ray features features
COPY --chown=ray pipelines pipelines
COPY --chown=ray ray_jobs ray_jobs
COPY --chown=ray serving serving
COPY --chown=ray streamrec streamrec
COPY --chown=ray deploy/local deploy/local
RUN --mount=type=bind,from=wheels,source=/build/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-index --find-links /tmp/wheels "setuptools>=77" \
 && pip install --no-cache-dir --no-index --find-links /tmp/wheels --no-build-isolation \
        -c constraints.txt -e ".[serve,train]"
ENV PYTHONPATH=/opt/streamrec \
    STREAMREC_ENVIRONMENT=production
