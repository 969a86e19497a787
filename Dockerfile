# matcher server image: `matcher serve` on a SQLite database in the /data volume.
#
#   docker build -t matcher .
#   docker run -d --name matcher -p 50051:50051 -v matcher-data:/data --stop-timeout 30 matcher
#   docker exec matcher matcher merchant add --db /data/matcher.db demo-coffee   # prints the token once
#
# deploy/compose.yaml adds Prometheus; docs/operators.md is the operator's guide.
# Build argument EXTRAS: optional dependency groups, e.g. --build-arg EXTRAS=parquet for Parquet imports.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv in /opt/matcher, copied whole into the runtime stage -----------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils only for `strip` below; it stays in this stage.
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/matcher
WORKDIR /src
# Dependencies first, read from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" "${EXTRAS}" \
        > /tmp/requirements.txt \
    && /opt/matcher/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
COPY matcher ./matcher
COPY clients ./clients
RUN /opt/matcher/bin/pip install --no-deps .
# OpenDP's library ships with its symbols: 263 MB, 168 MB stripped. It is not patchelf'd, so
# stripping is safe; auditwheel-repaired libraries (numpy.libs and the like) are left alone.
RUN strip --strip-unneeded /opt/matcher/lib/python3.*/site-packages/opendp/lib/*.so
# intel-cmplr-lib-rt carries the compiler's LTO plugin (93 MB) and ipp-crypto the IPP library (three
# copies, 39 MB); matcher loads only libcrypto_mb and four runtime libraries (matcher/crypto/_mb.py).
RUN rm -f /opt/matcher/lib/icx-lto.so /opt/matcher/lib/libippcp.so*
# phonenumbers' geodata (40 MB) is read only by phonenumbers.geocoder (place names); matcher only
# parses and formats numbers.
RUN rm -rf /opt/matcher/lib/python3.*/site-packages/phonenumbers/geodata
# What is left must load: a CPU without AVX-512 IFMA is fine (matcher falls back to OpenSSL), a
# library that no longer loads is not. Then every entry point imports and a phone number normalises.
RUN /opt/matcher/bin/python -c "import sys; from matcher.crypto import _mb; _mb._load(); \
err = _mb._load_error or ''; sys.exit(err if err and 'AVX-512' not in err else 0)" \
    && /opt/matcher/bin/python -c "import matcher.server.cli, matcher.server.healthcheck, matcher_client.cli, opendp.prelude; \
from matcher.ids import normalize; assert normalize('138 0013 8000', 'phone') == '+8613800138000'"

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="matcher" \
      org.opencontainers.image.description="Privacy-preserving joint-audience matching server" \
      org.opencontainers.image.licenses="Apache-2.0"
# sqlite3: the operator's online backup (`sqlite3 /data/matcher.db ".backup /data/backup.db"`), ~2 MB.
RUN apt-get update && apt-get install -y --no-install-recommends sqlite3 && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid: a bind-mounted /data must be writable by 10001 (named volumes are).
RUN groupadd --system --gid 10001 matcher \
    && useradd --system --uid 10001 --gid matcher --home-dir /data --no-create-home --shell /usr/sbin/nologin matcher \
    && install -d -o matcher -g matcher -m 0700 /data
COPY --from=build /opt/matcher /opt/matcher
COPY deploy/entrypoint.sh /usr/local/bin/matcher-entrypoint
ENV PATH=/opt/matcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MATCHER_DB=/data/matcher.db \
    MATCHER_HEALTH_ADDRESS=127.0.0.1:50051
USER matcher
WORKDIR /data
# The database, its WAL and the operator's key file (matcher.db.keys) live here: back it up.
VOLUME ["/data"]
# 50051: gRPC (MatchService, AuditService, health). 9464: Prometheus metrics, when serve has --metrics.
EXPOSE 50051 9464
# grpc.health.v1 over the loopback; no token, no database. With TLS, set MATCHER_HEALTH_TLS_CA (and
# MATCHER_HEALTH_SERVER_NAME when the certificate does not name 127.0.0.1). The start period covers
# first-start key generation and loading a large audience. -P: the working directory (/data) is
# never on the import path.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-P", "-m", "matcher.server.healthcheck"]
# SIGTERM starts serve's graceful shutdown (running jobs get --grace seconds): give `docker stop` -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["matcher-entrypoint"]
CMD ["matcher", "serve", "--db", "/data/matcher.db", "--listen", "0.0.0.0:50051"]
