# warpsvc gRPC server image: one server process per container (scale with replicas), configured
# by WARPSVC_* environment variables (see warpsvc/server/settings.py), run as a non-root user.
#
#   docker build --network host -t warpsvc:latest .
#   docker build --network host --build-arg BASE_IMAGE=warpsvc-base:bookworm -t warpsvc:latest .
#
# BASE_IMAGE: the official slim Python image by default; any Debian-like image with python3 >= 3.11
# works, e.g. the local base from scripts/build_base_image.sh (debootstrap + docker import) on
# networks without registry access. Such a base lacks ensurepip/venv: the build stage then
# installs python3-venv with apt. `--network host` lets apt and pip reach their mirrors where the
# default bridge network has no route out; it is harmless elsewhere.
#
# Package indexes and TLS: pip uses the base image's system CA store (PIP_CERT below), so a CA
# that the base trusts (build_base_image.sh adds the host's bundle) works for pip too.
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT can be given as --build-arg; none of them lands
# in the final image.
ARG BASE_IMAGE=python:3.11-slim

# ---- requirements: the image's dependency list (pyproject.toml: the base dependencies plus the
# `server`, `client` and `batch` extras -- warpsvc-batch runs from this image too -- with their
# `warpsvc[...]` self-references expanded), alone in a file, so that the layer installing them
# is reused until that list changes (not on every pyproject.toml edit) --------------------------
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
x = p["optional-dependencies"]; \
E = lambda extra: [d for r in x[extra] for d in (sum((E(n) for n in r[8:-1].split(",")), []) \
                   if r.startswith("warpsvc[") else [r])]; \
print("\n".join(dict.fromkeys(p["dependencies"] + E("server") + E("client") + E("batch"))))' > requirements.txt

# ---- deps: a virtual environment in /opt/venv with the dependencies only -----------------------
# (Its own stage and layer: a source edit neither reinstalls numba/OpenCV/grpc nor copies them
# into a new image layer.)
FROM ${BASE_IMAGE} AS deps
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DEBIAN_FRONTEND=noninteractive
RUN set -eu; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update -q; \
        apt-get install -y -q --no-install-recommends python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

# ---- wheel: the project (warpsvc + warpsvc_api + warpsvc_client) as a wheel ------------------------------------
FROM deps AS wheel
# Build args end with their stage: pip's build isolation fetches setuptools here too, so the
# index and CA settings are declared again (a private-index build failed at this step).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY warpsvc ./warpsvc
COPY warpsvc_api ./warpsvc_api
COPY clients ./clients
RUN pip wheel --no-deps --wheel-dir /dist .

# ---- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="warpsvc" \
      org.opencontainers.image.description="Image warps, Jacobian-determinant maps and alignment over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# libgomp1: numba's OpenMP threading layer. Without it numba falls back to "workqueue", which is
# not thread-safe and terminates the process when two handler threads run parallel kernels at once
# (seen in the compose e2e stop test); NUMBA_THREADING_LAYER=omp makes a missing layer an import
# error instead of a crash under load.
RUN set -eu; \
    if ! ldconfig -p | grep -q libgomp.so.1; then \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libgomp1; \
        rm -rf /var/lib/apt/lists/*; \
    fi
ENV NUMBA_THREADING_LAYER=omp
RUN groupadd --system --gid 10001 warpsvc \
    && useradd --system --uid 10001 --gid warpsvc --home-dir /home/warpsvc --create-home \
               --shell /usr/sbin/nologin warpsvc \
    && install -d -o warpsvc -g warpsvc /var/cache/warpsvc/numba
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /dist /tmp/dist
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir /tmp/dist/*.whl \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/dist
# One worker process per container (WARPSVC_WORKERS); listen on every interface of the
# container; numba's compiled kernels are cached in a folder the user can write.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/cache/warpsvc/numba \
    WARPSVC_HOST=0.0.0.0 \
    WARPSVC_PORT=50051 \
    WARPSVC_WORKERS=1
USER warpsvc:warpsvc
WORKDIR /home/warpsvc
# Compile numba's kernels now into NUMBA_CACHE_DIR (`python -m warpsvc.core.warmup`: every
# compiled kernel for every signature the library dispatches, loaded in this process, then small
# warps through every path), so a new replica's background warm-up loads them from the cache in
# ~0.3 s instead of compiling them for ~17 s of CPU (measured). Plain warps of the library
# would not do: their first calls run the numpy tiers and the compiled ones load in a daemon
# thread that the end of the build step kills. NUMBA_WARMUP=0 skips it; without it, replicas pay
# that compile later. The second command (`--check`, a new process) fails the build if any
# kernel would still be compiled at run time: an image with an unusable cache is not shipped.
ARG NUMBA_WARMUP=1
RUN if [ "$NUMBA_WARMUP" = 1 ]; then python -m warpsvc.core.warmup -q && python -m warpsvc.core.warmup --check; fi
EXPOSE 50051 9464
# SERVING -> healthy. The probe checks 127.0.0.1:$WARPSVC_PORT inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "warpsvc.healthcheck", "--timeout", "3"]
# SIGTERM: health NOT_SERVING, new calls refused, in-flight calls get WARPSVC_GRACE_SECONDS
# (default 30 s) to finish; give the container a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["warpsvc"]
CMD ["serve"]
