"""Property 2: rendering is atomic under kill, and what survives is a repository Triton loads.

tests/test_render.py::test_render_killed_at_random_points_leaves_a_loadable_repository already kills
renders at random points and checks the survivor is the old or the new tree, configs schema-valid.
What it does not check, and this does: kills aimed at the critical window (the new tree staged and
fsynced, the swap about to happen or just done), that built artifacts (90 MB model.onnx, tokenizer
files, manifests), which a re-render carries over by hard link, survive the kill too, and that a real
tritonserver loads the survivor and answers with an embedding.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_render import tree_hash
from tritonkit import defaults, render
from tritonkit.hardware import declared
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec

from .helpers import ROOT, free_ports

# Two CPU plans for the embedded server that differ (1 vs 2 encoder instances): both load here, and a
# mix of the two would show up as a config that belongs to neither.
KILL_SCRIPT = """
import dataclasses, sys
from pathlib import Path
from tritonkit import atomic, defaults, render
from tritonkit.hardware import declared
from tritonkit.policy import plan
from tritonkit.servers import SERVERS
from tritonkit.spec import load_spec
spec = load_spec(defaults.DEFAULT_SPEC)
plans = [plan(spec, dataclasses.replace(declared("none"), cpu_cores=c), SERVERS["embedded"]) for c in (1, 2)]
fsync_tree = atomic._fsync_tree
def staged(root):  # called once the new tree is staged, right before the swap: tell the parent
    print("staged", flush=True)
    fsync_tree(root)
atomic._fsync_tree = staged
i = 0
while True:
    render.write_repository(plans[i % 2], Path(sys.argv[1]))
    print("swapped", flush=True)
    i += 1
"""
KILLS = 6


def _plans():
    spec = load_spec(defaults.DEFAULT_SPEC)
    return [plan(spec, dataclasses.replace(declared("none"), cpu_cores=c), SERVERS["embedded"]) for c in (1, 2)]


@pytest.mark.integration
def test_killed_renders_leave_a_repository_tritonserver_loads(built_repo, tmp_path):
    """Prevents a SIGKILLed render (OOM killer, Ctrl-\\, a CI timeout) leaving a repository that mixes two
    renders, lost its built model files, or that tritonserver then refuses to load."""
    from tritonkit.serve import EmbeddedServer, ServerOptions

    plans = _plans()
    out = tmp_path / "repo"
    shutil.copytree(built_repo, out, copy_function=os.link)  # artifacts shared, as a re-render keeps them
    valid = {}  # the two complete trees a render can leave (built_repo is the "2 instances" one on 2 cores)
    for name, p in (("1 instance", plans[0]), ("2 instances", plans[1])):
        expected = tmp_path / f"expected-{len(valid)}"
        shutil.copytree(built_repo, expected, copy_function=os.link)
        render.write_repository(p, expected)
        valid[frozenset(tree_hash(expected).items())] = name
    assert len(valid) == 2, "the two plans must render different trees, or a mix could go unnoticed"
    if frozenset(tree_hash(out).items()) not in valid:  # built on a host with another core count
        render.write_repository(plans[1], out)

    rng = random.Random(7)
    swaps = 0
    for k in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], cwd=ROOT, stdout=subprocess.PIPE)
        if k % 2:  # at a random time: anywhere in the render loop, as tests/test_render.py does
            time.sleep(0.7 + rng.random() * 0.6)
        else:      # inside the critical window: the new tree staged, the swap about to happen or just done
            wanted = 1 + rng.randrange(4)  # the wanted-th render's window
            while wanted and (line := proc.stdout.readline()):
                wanted -= line == b"staged\n"
            time.sleep(rng.random() * 0.002)
        proc.send_signal(signal.SIGKILL)
        swaps += proc.communicate(timeout=10)[0].count(b"swapped")
        assert out.is_dir(), "the repository vanished"
        state = frozenset(tree_hash(out).items())
        assert state in valid, "a killed render left a tree that is neither the old nor the new one"
        for leftover in tmp_path.glob(".repo.*"):
            assert leftover.name.startswith(".repo.render-"), leftover  # staging garbage, never the repository
    interrupted = list(tmp_path.glob(".repo.render-*"))  # a render killed between staging and swap leaves one
    print(f"\nFIGURE atomic render: {KILLS} kills, {swaps} renders completed, {len(interrupted)} killed mid-render")
    assert swaps >= KILLS // 2, f"only {swaps} renders completed in {KILLS} runs: the kills came too early"
    assert interrupted, "no kill landed between staging and swap: the critical window was not tested"

    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repository=out, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            exit_timeout_s=5, log_file=tmp_path / "tritonserver.log")
    with EmbeddedServer(options) as server:
        assert server.models == {"minilm": "READY", "minilm_tokenizer": "READY", "minilm_encoder": "READY"}
        import tritonclient.grpc as grpcclient
        client = grpcclient.InferenceServerClient(server.grpc_url)
        text = grpcclient.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"the survivor serves"]], dtype=object))
        embedding = client.infer("minilm", [text]).as_numpy("embedding")
        client.close()
    assert embedding.shape == (1, 384) and abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-4
