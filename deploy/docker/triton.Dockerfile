# The GPU Triton image: the NGC tritonserver (every backend: TensorRT, ONNX Runtime, PyTorch, python)
# plus what the kit's python-backend models import (tokenizers, onnxruntime, numpy), started by
# triton-entrypoint.sh with the same safety flags as tritonkit's embedded server. No torch.
#
# Installs only from the wheelhouse `deploy/docker/stage.sh --ngc` downloads (Python 3.12, the NGC
# image's). Context: deploy/docker/. The base tag comes from .env (TRITON_IMAGE = tritonkit/defaults.py).
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:26.10-py3

FROM ${BASE_IMAGE} AS deps
ARG WHEELS=build/wheels/triton-ngc
COPY ${WHEELS} /wheels
# Into a separate folder on PYTHONPATH (inherited by the python backend stubs): the image's own Python
# packages stay untouched and the wheelhouse stays out of the final image.
RUN set -eu; \
    pip_whl=$(ls /wheels/pip-*.whl); \
    python3 "$pip_whl/pip" install --no-index --find-links /wheels --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --quiet --target /opt/tritonkit-python -r /wheels/requirements.txt

FROM ${BASE_IMAGE}
COPY --from=deps /opt/tritonkit-python /opt/tritonkit-python
COPY triton-entrypoint.sh /usr/local/bin/tritonkit-triton
# The NGC image's user (triton-server) is uid 1000; create one where a base lacks it.
RUN getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin triton
ENV PYTHONPATH=/opt/tritonkit-python TRITON_HTTP_PORT=8000 TRITON_GRPC_PORT=8001 TRITON_METRICS_PORT=8002
LABEL org.tritonkit.image="triton" \
      org.opencontainers.image.title="tritonkit triton" \
      org.tritonkit.accelerator="gpu" \
      org.tritonkit.repository="/models"
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=2s --timeout=3s --start-period=600s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['TRITON_HTTP_PORT'], timeout=2)" || exit 1
# The NGC entrypoint (/opt/nvidia/nvidia_entrypoint.sh: banner, driver checks) stays; it execs this.
CMD ["tritonkit-triton"]
