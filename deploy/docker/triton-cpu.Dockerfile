# The slim Triton image for hosts without an NVIDIA GPU: the real tritonserver 2.51 bundled in the PyPI
# wheel nvidia-pytriton (python backend only), run by `tritonkit serve` (loopback by default, admin APIs
# restricted, fail-fast model loading), plus what the kit's python-backend models import (numpy,
# onnxruntime, tokenizers). No torch. Development/CI server: Triton 2.51 predates the 2025 security fixes.
#
# Installs only from the wheelhouse that deploy/docker/stage.sh downloads (pip --no-index). Context: deploy/docker/.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# The python backend stub embeds libpython3.11 (the wheelhouse is for 3.11: Debian bookworm's Python).
RUN set -eu; \
    if ! command -v python3 >/dev/null || ! ls /usr/lib/x86_64-linux-gnu/libpython3.11.so.1* >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 libpython3.11 ca-certificates curl; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin triton; \
    install -d -o 1000 -g 1000 /home/triton
WORKDIR /home/triton

FROM base AS venv
ARG WHEELS=build/wheels/triton-cpu
COPY ${WHEELS} /wheels
RUN set -eu; \
    python3 -m venv --without-pip /opt/venv; \
    pip_whl=$(ls /wheels/pip-*.whl); \
    pip="/opt/venv/bin/python $pip_whl/pip install --no-index --find-links /wheels --no-cache-dir --disable-pip-version-check --root-user-action=ignore --quiet"; \
    $pip -r /wheels/requirements.txt; \
    if [ -s /wheels/requirements-nodeps.txt ]; then $pip --no-deps -r /wheels/requirements-nodeps.txt; fi; \
    echo /opt/tritonkit > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tritonkit.pth"; \
    printf '#!/bin/sh\nexec /opt/venv/bin/python -m tritonkit.cli "$@"\n' > /opt/venv/bin/tritonkit; \
    chmod 755 /opt/venv/bin/tritonkit

FROM base
COPY --from=venv /opt/venv /opt/venv
COPY build/src /opt/tritonkit
ENV PATH=/opt/venv/bin:$PATH HOME=/home/triton PYTHONUNBUFFERED=1 \
    TRITON_HTTP_PORT=8000 TRITON_GRPC_PORT=8001 TRITON_METRICS_PORT=8002
LABEL org.tritonkit.image="triton-cpu" \
      org.opencontainers.image.title="tritonkit triton-cpu" \
      org.opencontainers.image.description="embedded tritonserver 2.51 (nvidia-pytriton wheel), CPU only, development/CI" \
      org.tritonkit.accelerator="cpu" \
      org.tritonkit.repository="/models"
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=2s --timeout=3s --start-period=300s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${TRITON_HTTP_PORT}/v2/health/ready" || exit 1
# Ports and bind address come from the environment so one image serves bridge (0.0.0.0 inside, published
# on 127.0.0.1) and host networking (127.0.0.1, CI) alike.
ENTRYPOINT ["/bin/sh", "-c", "exec tritonkit serve --repo \"${TRITON_MODEL_REPOSITORY:-/models}\" --address \"${TRITON_BIND:-0.0.0.0}\" --http-port \"$TRITON_HTTP_PORT\" --grpc-port \"$TRITON_GRPC_PORT\" --metrics-port \"$TRITON_METRICS_PORT\" \"$@\"", "tritonkit-serve"]
