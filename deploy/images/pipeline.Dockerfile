# syntax=docker/dockerfile:1.7
# The pipeline image: Flink's TaskManagers and JobManager with the Beam Python SDK harness as a
# PROCESS (`/opt/apache/beam/boot`, deploy/k8s/base/beam/), and the feature-pipeline driver
# (`python -m pipelines.cli pipeline run --follow`) that submits to Beam's Flink job server.
#   docker build -f deploy/images/pipeline.Dockerfile -t streamrec-flink-beam:0.1.0 .
# Built on Beam's own SDK image (Python 3.11 + the harness boot for exactly this Beam version), with
# Flink's distribution copied in from Flink's image: the reverse (Python 3.11 onto Flink's Ubuntu
# image) would need a Python built for it. Pin both by digest when publishing.
ARG BEAM_VERSION=2.77.0
ARG FLINK_VERSION=1.20

FROM flink:${FLINK_VERSION}-java17 AS flink

FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-base

# 1. wheels: the pipeline extra only (no torch, no Ray, no embedded broker), exactly as
#    deploy/images/pipeline-requirements.txt lists them (lock versions, sha256-checked).
FROM beam-base AS wheels
WORKDIR /build
COPY deploy/images/pipeline-requirements.txt ./
RUN pip download --no-cache-dir --no-deps --only-binary :all: --require-hashes -d wheels -r pipeline-requirements.txt

# 2. runtime: Java 17 for Flink, Flink's distribution and entrypoint, a venv at /opt/streamrec/.venv
#    that sees the image's apache-beam, run as Flink's non-root user.
FROM beam-base AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless gosu \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 9999 flink \
 && useradd --system --home-dir /opt/flink --uid 9999 --gid flink flink
COPY --from=flink --chown=flink:flink /opt/flink /opt/flink
COPY --from=flink /docker-entrypoint.sh /docker-entrypoint.sh
WORKDIR /opt/streamrec
COPY --chown=flink:flink pyproject.toml constraints.txt README.md ./
COPY --chown=flink:flink features features
COPY --chown=flink:flink pipelines pipelines
COPY --chown=flink:flink ray_jobs ray_jobs
COPY --chown=flink:flink serving serving
COPY --chown=flink:flink streamrec streamrec
COPY --chown=flink:flink deploy/images/pipeline-requirements.txt deploy/images/pipeline-requirements.txt
RUN --mount=type=bind,from=wheels,source=/build/wheels,target=/tmp/wheels \
    python -m venv --system-site-packages /opt/streamrec/.venv \
 && /opt/streamrec/.venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels --no-deps --require-hashes \
        -r deploy/images/pipeline-requirements.txt \
 && chown -R flink:flink /opt/streamrec
ENV FLINK_HOME=/opt/flink \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    PATH=/opt/streamrec/.venv/bin:/opt/flink/bin:$PATH \
    PYTHONPATH=/opt/streamrec \
    STREAMREC_ENVIRONMENT=production
USER flink
ENTRYPOINT ["/docker-entrypoint.sh"]
