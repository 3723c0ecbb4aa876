#!/bin/sh
# Starts the NGC tritonserver the way tritonkit's embedded server starts (tritonkit/serve.py):
# model control mode none, strict readiness, exit on any model that fails to load, and the admin APIs
# restricted behind a header whose value is random per start unless TRITON_ADMIN_TOKEN is set.
# tests/test_compose.py checks that RESTRICTED_APIS equals serve.DEFAULT_RESTRICTED_APIS.
set -eu
RESTRICTED_APIS="model-repository,shared-memory,trace,logging"
ADMIN_HEADER="tritonkit-admin"
token=${TRITON_ADMIN_TOKEN:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
rule="$RESTRICTED_APIS:$ADMIN_HEADER=$token"
exec tritonserver \
    --model-repository="${TRITON_MODEL_REPOSITORY:-/models}" \
    --http-address="${TRITON_BIND:-0.0.0.0}" --http-port="${TRITON_HTTP_PORT:-8000}" \
    --grpc-address="${TRITON_BIND:-0.0.0.0}" --grpc-port="${TRITON_GRPC_PORT:-8001}" \
    --metrics-address="${TRITON_BIND:-0.0.0.0}" --metrics-port="${TRITON_METRICS_PORT:-8002}" \
    --model-control-mode=none --strict-readiness=true --exit-on-error=true --exit-timeout-secs=30 \
    --metrics-config=summary_latencies=true \
    --http-restricted-api="$rule" --grpc-restricted-protocol="$rule" \
    "$@"
