"""Property 3: a config.pbtxt that Triton would reject is caught before launch.

Each config below is broken in one way. tritonkit's validator (`render.validate_repository`, the
checks `write_repository` runs on every render) and a real tritonserver 2.51 start (fail fast) must
agree: both reject it, with the messages listed. Three disagreements are deliberate and documented
with their reason: 2.51 loads those configs (see SERVER_ACCEPTS), tritonkit refuses them.
"""

from __future__ import annotations

import re

import pytest

from tritonkit.errors import UserError
from tritonkit.render import validate_repository

from .helpers import free_ports

GOOD = "good"
IO = ('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
      'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
PY = 'backend: "python"\nmax_batch_size: 4\n'


def _step(model: str = GOOD, inp: str = "INPUT0", out: str = "OUTPUT0", out_to: str = "OUTPUT0") -> str:
    return (f'ensemble_scheduling {{ step [ {{ model_name: "{model}" model_version: -1 '
            f'input_map {{ key: "{inp}" value: "INPUT0" }} output_map {{ key: "{out}" value: "{out_to}" }} }} ] }}\n')


def _ens(mbs: int = 4, **step) -> str:
    return f'platform: "ensemble"\nmax_batch_size: {mbs}\n{IO}{_step(**step)}'


# name -> (config body after `name: "<name>"`, validator message fragment, tritonserver 2.51 message fragment)
BAD = {
    "unknown_field": ('backend: "python"\nmax_batch_sizee: 4\n' + IO,
                      'no field named "max_batch_sizee"', "failed to read text proto"),
    "unknown_enum_kind": (PY + IO + "instance_group [ { kind: KIND_TPU } ]\n",
                          "no value named KIND_TPU", "failed to read text proto"),
    "unknown_data_type": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FLOAT33 dims: [ -1 ] } ]\n'
                          'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                          "no value named TYPE_FLOAT33", "failed to read text proto"),
    "queue_size_negative": (PY + IO + "dynamic_batching { default_queue_policy { max_queue_size: -1 } }\n",
                            "Value out of range: -1", "failed to read text proto"),
    "dims_missing": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 } ]\n'
                     'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                     "input 'INPUT0' must specify 'dims'", "input 'INPUT0' must specify 'dims'"),
    "data_type_missing": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                          'output [ { name: "OUTPUT0" dims: [ -1 ] } ]\n',
                          "output 'OUTPUT0' must specify 'data_type'", "output 'OUTPUT0' must specify 'data_type'"),
    "dim_zero": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 0 ] } ]\n'
                 'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                 "dimension must be integer >= 1, or -1", "dimension must be integer >= 1, or -1"),
    "dim_minus_two": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -2 ] } ]\n'
                      'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                      "dimension must be integer >= 1, or -1", "dimension must be integer >= 1, or -1"),
    "max_batch_size_negative": ('backend: "python"\nmax_batch_size: -1\n' + IO,
                                "'max_batch_size' must be non-negative", "'max_batch_size' must be non-negative"),
    "name_mismatch": (None, "config name does not match its folder", "directory name must equal model name"),
    "preferred_batch_over_max": (PY + IO + "dynamic_batching { preferred_batch_size: [ 8 ] }\n",
                                 "preferred size must be <= max batch size",
                                 "preferred size must be <= max batch size"),
    "ensemble_missing_model": (_ens(model="no_such_model"), "ensemble step names a model that is not in the repository",
                               "contains models that are not available"),
    "ensemble_unknown_input": (_ens(inp="NOT_AN_INPUT"), "maps to input 'NOT_AN_INPUT', which that model does not have",
                               "mapping to non-existing input NOT_AN_INPUT"),
    "ensemble_output_unproduced": (_ens(out_to="SOMETHING_ELSE"), "ensemble output(s) that no step produces",
                                   "ensemble output 'OUTPUT0'"),
    "ensemble_batch_over_composing": (_ens(mbs=16), "only allows 4", "only allows maximum batch size to be 4"),
    # Deliberately stricter than 2.51, which loads these:
    "duplicate_input": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, '
                        '{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                        "model input name 'INPUT0' appears twice", None),
    "duplicate_output": (PY + 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                         'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, '
                         '{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
                         "model output name 'OUTPUT0' appears twice", None),
    "instance_count_negative": (PY + IO + "instance_group [ { kind: KIND_CPU count: -1 } ]\n",
                                "has a negative count", None),
}
# Why tritonkit refuses what 2.51 loads (each verified below: the server logs "successfully loaded"):
SERVER_ACCEPTS = {
    "duplicate_input": "two inputs of one name: a request cannot address each; which one the model reads is luck",
    "duplicate_output": "two outputs of one name: a client cannot ask for either one",
    "instance_count_negative": "2.51 quietly runs 1 instance of a config that asked for -1: a typo that hides",
}
ADD_ONE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1)]) for r in requests]
"""


@pytest.fixture(scope="module")
def bad_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("bad_configs") / "repo"
    for name, (body, _, _) in {GOOD: (PY + IO, None, None), **BAD}.items():
        (repo / name / "1").mkdir(parents=True)
        text = f'name: "{name}"\n{body}' if body is not None else f'name: "someone_else"\n{PY}{IO}'
        (repo / name / "config.pbtxt").write_text(text)
        if "ensemble" not in text:
            (repo / name / "1" / "model.py").write_text(ADD_ONE)
    return repo


def test_the_set_is_large_enough():
    """Prevents the agreement below resting on a handful of cases."""
    assert len(BAD) >= 8 and set(SERVER_ACCEPTS) <= set(BAD)
    assert len(BAD) - len(SERVER_ACCEPTS) >= 8  # configs both sides reject


def test_validator_rejects_each_bad_config_with_its_reason(bad_repo):
    """Prevents a config Triton refuses at load (an hour into a deployment) passing tritonkit's checks, and
    a check so broad that it rejects the good model next to them."""
    problems = {str(p.where).split("/")[-2]: str(p) for p in validate_repository(bad_repo)}
    assert set(problems) == set(BAD), sorted(set(problems) ^ set(BAD))
    for name, (_, fragment, _) in BAD.items():
        assert fragment in problems[name], f"{name}: {fragment!r} not in {problems[name]!r}"


@pytest.mark.integration
def test_tritonserver_agrees_and_start_refuses_before_launch(bad_repo, tmp_path):
    """Prevents the validator drifting from what the real server enforces (a rule it invents, or one it
    misses), and `tritonkit serve` launching a server that then fails on configs it could have named."""
    from tritonkit.serve import EmbeddedServer, ServerOptions

    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repository=bad_repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            exit_timeout_s=5, log_file=tmp_path / "tritonserver.log")

    # tritonkit: fail fast refuses before launching anything, naming every bad model.
    refused = EmbeddedServer(options)
    with pytest.raises(UserError) as err:
        refused.start()
    assert refused.pid is None, "a server was launched despite configs that cannot load"
    assert f"{len(BAD)} model config(s) would not load" in str(err.value)
    for name in BAD:
        assert f"/{name}/config.pbtxt" in str(err.value), name

    # tritonserver 2.51 on the same repository (the pre-launch check bypassed): its own verdicts.
    server = EmbeddedServer(options)
    server._check_configs = lambda: None
    # Exit code 1: it refused. 2.51 sometimes segfaults (-11) while unloading the python models that did load,
    # after it has refused; that is a crash on its way out, so the log must show the shutdown had begun.
    with pytest.raises(UserError, match=r"exited with code (1|-11) before it was ready") as refusal:
        with server:
            pass
    log = options.log_file.read_text(errors="replace")
    if "code -11" in str(refusal.value):
        assert "All models are stopped, unloading models" in log, "a crash before 2.51 decided to exit"
    errors = [line for line in log.splitlines() if line.startswith("E") and "CudaDriverHelper" not in line]
    assert f"successfully loaded '{GOOD}'" in log
    for name, (_, _, fragment) in BAD.items():
        mine = [line for line in errors if re.search(rf"\b{name}\b", line)]
        if fragment is None:
            assert not mine and f"successfully loaded '{name}'" in log, (name, mine)
            assert SERVER_ACCEPTS[name]
        else:
            assert any(fragment in line for line in mine), f"{name}: {fragment!r} not in server errors {mine}"
