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

# 1. wheels: torch from the variant's index, then every other distribution of the serve and train
#    extras exactly as deploy/images/ray-requirements.txt lists them (lock versions, sha256-checked).
FROM ray-base AS wheels
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
USER root
WORKDIR /build
COPY constraints.txt deploy/images/ray-requirements.txt ./
# torch first and exactly the lock's version from the variant's index (the default index serves CUDA wheels).
RUN pip download --no-cache-dir --no-deps -d wheels --index-url "${TORCH_INDEX}" \
        "torch==$(sed -n 's/^torch==//p' constraints.txt)" \
 && pip download --no-cache-dir --no-deps --only-binary :all: --require-hashes -d wheels -r ray-requirements.txt

# 2. runtime: Ray's image, non-root (its user `ray`), the repository at /opt/streamrec (the RayJob
#    entrypoints name /opt/streamrec/ray_jobs/configs/*.yaml, PYTHONPATH makes its packages
#    importable), the wheels installed offline with their hashes checked again.
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
COPY --chown=ray deploy/images/ray-requirements.txt deploy/images/ray-requirements.txt
RUN --mount=type=bind,from=wheels,source=/build/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-index --find-links /tmp/wheels --no-deps torch \
 && pip install --no-cache-dir --no-index --find-links /tmp/wheels --no-deps --require-hashes \
        -r deploy/images/ray-requirements.txt
ENV PYTHONPATH=/opt/streamrec \
    STREAMREC_ENVIRONMENT=production
