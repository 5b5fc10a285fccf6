# Heimdall in a container: the server only (no lab), as a non-root user.
#   docker build -t heimdall .
#   docker run -d -p 53:1053/udp -p 53:1053/tcp -e HEIMDALL_UPSTREAM_SERVERS=9.9.9.9:53 heimdall
# docs/server.md, "Run it in a container".

# Build: the wheel (with the C hot path, so a compiler is needed here and only here)
# and a venv with it and the server's dependencies at constraints.txt's versions.
FROM python:3.12-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE constraints.txt ./
COPY heimdall/ heimdall/
COPY tools/ tools/
COPY probes/ probes/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/heimdall \
 && /opt/heimdall/bin/pip install --no-cache-dir -c constraints.txt /wheels/heimdall_dns-*.whl \
 && /opt/heimdall/bin/python -c "import heimdall._hotpath"

# Run: the same Python, the venv, nothing else.
FROM python:3.12-slim-bookworm
COPY --from=build /opt/heimdall /opt/heimdall
RUN useradd --system --no-create-home --uid 10053 heimdall \
 && install -d -o heimdall -g heimdall -m 700 /var/lib/heimdall
USER heimdall
# The saved copies of list URLs (HEIMDALL_STATE_DIR defaults to it: writable by the server's user)
VOLUME ["/var/lib/heimdall"]
# HTTP stays inside the container (the health check reaches it); to scrape it from outside, set
# HEIMDALL_HTTP_BIND_ADDR=0.0.0.0:8053 and HEIMDALL_API_TOKEN (the server refuses the first alone).
ENV PATH=/opt/heimdall/bin:$PATH \
    HEIMDALL_BIND_ADDR=0.0.0.0:1053 \
    HEIMDALL_HTTP_BIND_ADDR=127.0.0.1:8053
EXPOSE 1053/udp 1053/tcp 8053/tcp
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8053/health', timeout=2).status != 200)"]
# SIGTERM: in-flight queries finish (HEIMDALL_SHUTDOWN_GRACE), then exit 0
STOPSIGNAL SIGTERM
ENTRYPOINT ["heimdall", "serve"]
