# The gateway daemon (`gateway run`) as a non-root container.
#
#   docker build -t kundebetjening-gateway .
#   docker run -d -p 2525:2525 -p 8025:8025 \
#     -v gateway-var:/app/var -v "$PWD/config:/app/config:ro" \
#     -e GATEWAY_MAIL__REPLY_TOKEN_SECRET=… -e GATEWAY_API__AGENT_TOKENS='["…"]' \
#     kundebetjening-gateway
#
# /app/config holds gateway.toml (every key can be overridden by GATEWAY_<SECTION>__<KEY>);
# /app/var holds the SQLite store, attachment blobs and the outbound maildir (use PostgreSQL
# through GATEWAY_DATABASE__URL to run several containers against one store).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The code runs from /app, where templates/ and the migrations sit beside the packages.
    PYTHONPATH=/app \
    # Inside a container the listeners must face the container's network, not its loopback.
    GATEWAY_SMTP__HOST=0.0.0.0 \
    GATEWAY_API__HOST=0.0.0.0

WORKDIR /app

RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home --shell /usr/sbin/nologin gateway

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY store ./store
COPY templates ./templates
COPY config/gateway.example.toml config/gateway.toml ./config/
RUN pip install . \
 && mkdir -p /app/var \
 && chown -R gateway:gateway /app/var

USER gateway

VOLUME ["/app/var", "/app/config"]
EXPOSE 2525 8025

# The API's /healthz: the store answers and every loop of the daemon is alive.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_API__PORT', '8025') + '/healthz', timeout=4)"]

# SIGTERM: stop accepting, finish what is in flight, exit within daemon.grace_s.
STOPSIGNAL SIGTERM
CMD ["gateway", "--config", "/app/config/gateway.toml", "run"]
