"""What a benchmark sends: the spec's model turned into tritonclient requests of realistic shape."""

from __future__ import annotations

from pathlib import Path

from . import defaults
from .spec import ModelSpec

SENTENCES = defaults.PROJECT_ROOT / "deploy" / "sentences.txt"


def load_texts(path: Path = SENTENCES) -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def bench_target(model: ModelSpec, url: str, protocol: str, batch: int = 1):
    """Text pipelines get real sentences; other models get seeded data at each axis' `opt` size."""
    from .load import BenchTarget, TensorSpec

    lead = (batch,) if model.batched else ()
    if model.pipeline == "text-embedding":
        return BenchTarget(model=model.name, inputs=(TensorSpec(model.text_input, "BYTES", lead + (1,)),),
                           outputs=tuple(t.name for t in model.outputs), url=url, protocol=protocol,
                           texts=load_texts())
    inputs = tuple(TensorSpec(t.name, t.dtype, lead + model.shape(model.triton_dims_named(t), "opt"))
                   for t in model.inputs)
    return BenchTarget(model=model.name, inputs=inputs, outputs=tuple(t.name for t in model.outputs), url=url,
                       protocol=protocol)
