#!/usr/bin/env bash
# Rebuilds the artifacts in this folder exactly as tritonkit did, from the plan in the repository (two levels up).
set -euo pipefail
tritonkit build --repo "$(dirname "$0")/../.." --force
