# The provisioner service. Build: docker build -t provisioner .
# Run: docker run -p 8080:8080 -v provisioner-data:/var/lib/provisioner provisioner

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the wheel build reads.
COPY . .
# A non-editable install into a venv at the path it keeps in the final image, so
# its scripts' shebangs stay valid; migrations ride inside the wheel.
RUN python -m venv /opt/provisioner \
    && /opt/provisioner/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm

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
CMD ["provisioner", "serve", "--host", "0.0.0.0"]
