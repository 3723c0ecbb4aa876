"""Fixtures of the reliability suite (issue #7); the session fixtures `built_repo` and `minilm_server`
come from tests/conftest.py and are shared with the rest of the suite."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import load_soak, serve_process  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def minilm_capacity(minilm_server) -> float:
    """Requests/s the shared MiniLM server sustains (closed loop, the bench step), measured once."""
    from tritonkit import defaults
    from tritonkit.spec import load_spec
    model = load_spec(defaults.DEFAULT_SPEC).models[0]
    return load_soak().measure_capacity(minilm_server.grpc_url, model, concurrency=(4, 8), requests=300)
