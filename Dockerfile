# The provisioner service.
#   Build: podman build --format docker -t provisioner .     (or docker build)
#   Run:   podman run -p 127.0.0.1:8080:8080 -v provisioner-data:/var/lib/provisioner provisioner
# With no container registry in reach, build on a local Debian base instead:
#   podman build --format docker --build-arg BASE="$(scripts/container-base)" -t provisioner .
# Behind a TLS-intercepting proxy, give pip the host's CA bundle (never stored in the image):
#   --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt

# Any Debian bookworm image with python3 (3.11) and its venv module: the usual public one,
# or scripts/container-base's.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the wheel build reads.
COPY . .
# A non-editable install into a venv at the path it keeps in the final image, so
# its scripts' shebangs stay valid; migrations ride inside the wheel.
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python3 -m venv /opt/provisioner \
    && /opt/provisioner/bin/pip install --no-cache-dir .

FROM ${BASE}

# tini as PID 1 passes SIGTERM on to the service, which stops in a moment. Python as
# PID 1 would not even see a SIGTERM sent before uvicorn handles it (while it starts:
# the kernel drops signals PID 1 has no handler for), and be killed after the engine's
# stop timeout.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid so volume ownership survives rebuilds and matches on every host.
RUN useradd --system --no-log-init --uid 10001 --user-group \
        --home-dir /var/lib/provisioner --shell /usr/sbin/nologin provisioner \
    && install -d -m 0700 -o provisioner -g provisioner /var/lib/provisioner

COPY --from=builder /opt/provisioner /opt/provisioner

ENV PATH=/opt/provisioner/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROVISIONER_DATA_DIR=/var/lib/provisioner

# The SQLite database and the generated secret key live here: keep them across
# container replacements.
VOLUME ["/var/lib/provisioner"]
WORKDIR /var/lib/provisioner
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8080
# slim images have no curl; the venv's python is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROVISIONER_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["provisioner", "serve", "--host", "0.0.0.0"]
