#!/bin/sh
# The `prepare` step of the compose stack (runs in the kit image before Triton starts):
# detect the hardware inside the stack, plan and render the model repository for it, and build what the plan
# names. Planning flags are given once, to render; build (here or in trt-build) reads the repository's plan.json.
# Any failure stops here with the cause in this service's log and a non-zero exit, so `triton` never
# starts on a missing or stale repository.
#
# Environment (set by docker-compose.yml / docker-compose.cpu.yml):
#   TRITONKIT_SPEC        model spec inside the container        (default /spec/models.yaml)
#   TRITONKIT_SERVER      ngc | embedded: which Triton serves it  (default embedded)
#   TRITONKIT_GPU         auto | none | a catalogue name          (default auto: what this container sees)
#   TRITONKIT_REPOSITORY  where to render                         (default /srv/tritonkit/model_repository)
#   TRITONKIT_BUILD       yes | no: no when trt-build builds the artifacts (GPU stack)   (default yes)
set -eu
spec=${TRITONKIT_SPEC:-/spec/models.yaml}
server=${TRITONKIT_SERVER:-embedded}
gpu=${TRITONKIT_GPU:-auto}
repo=${TRITONKIT_REPOSITORY:-/srv/tritonkit/model_repository}
step=start
trap 'code=$?; [ $code -eq 0 ] || echo "prepare: FAILED at step \"$step\" (exit $code): the cause is printed above; triton will not start" >&2' EXIT

step=detect
echo "prepare: hardware seen inside the stack:"
tritonkit detect
step=render
echo "prepare: rendering $spec for the $server server (--gpu $gpu) into $repo"
tritonkit render --spec "$spec" --gpu "$gpu" --server "$server" --out "$repo" --explain
if [ "${TRITONKIT_BUILD:-yes}" = yes ]; then
    step=build
    tritonkit build --repo "$repo"
else
    echo "prepare: artifacts are built by the trt-build service"
fi
step=done
echo "prepare: repository ready: $repo"
