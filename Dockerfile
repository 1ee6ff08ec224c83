# syntax=docker/dockerfile:1
# The CPU image `imagemesh` (`make image-cpu`): the gateway, the generation worker and the CLI
# (`imagemesh-gateway`, `imagemesh-gen-worker`, `imagemesh`, the commands of k8s/base). The
# enhance worker has its own CUDA image, Dockerfile.enhance.
#
# Runs as uid:gid 10001:10001 (the manifests' runAsUser/runAsGroup) on a read-only root
# filesystem: bytecode is compiled at build time, and HOME and TMPDIR are /tmp, the one
# writable mount (an emptyDir in the manifests).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/imagemesh
WORKDIR /src
# What the wheel is built from (tests/shipping checks this list against its own build).
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY examples/ examples/
COPY imagemesh/ imagemesh/
COPY gateway/ gateway/
COPY gen_worker/ gen_worker/
COPY enhance_worker/ enhance_worker/
RUN /opt/imagemesh/bin/pip install ".[server]"

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG PYTHON_VERSION
RUN groupadd --system --gid 10001 imagemesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin imagemesh
COPY --from=build /opt/imagemesh /opt/imagemesh
# PYTHONPATH: the deployables, which the wheel keeps out of the top level, importable as
# `python -m gateway` too (in this image nothing else is called `gateway`).
ENV PATH=/opt/imagemesh/bin:$PATH \
    PYTHONPATH=/opt/imagemesh/lib/python${PYTHON_VERSION}/site-packages/imagemesh/_deployables \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090 8081
CMD ["imagemesh-gateway"]
