"""What a benchmark sends: the spec's model turned into tritonclient requests of realistic shape."""

from __future__ import annotations

from pathlib import Path

from . import defaults
from .spec import TOKEN_PIPELINES, ModelSpec

SENTENCES = defaults.PROJECT_ROOT / "deploy" / "sentences.txt"


def load_texts(path: Path = SENTENCES) -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def bench_target(model: ModelSpec, url: str, protocol: str, batch: int = 1):
    """The spec's workload (texts, .npz/.npy samples or a folder of files) when it names one; else text
    pipelines get the example sentences and other models seeded data at each axis' `opt` size."""
    from .load import BenchTarget, TensorSpec

    lead = (batch,) if model.batched else ()
    outputs = tuple(t.name for t in model.outputs)
    work = model.workload
    if model.pipeline in TOKEN_PIPELINES:
        if model.pipeline == "text-classification":
            outputs += ("probabilities", "label")
        texts = load_texts(work.path) if work is not None and work.kind == "texts" else load_texts()
        return BenchTarget(model=model.name, inputs=(TensorSpec(model.text_input, "BYTES", lead + (1,)),),
                           outputs=outputs, url=url, protocol=protocol, texts=texts)
    if model.pipeline == "image-classification":
        if work is None or work.kind != "files":
            from .errors import UserError
            raise UserError("an image classifier is measured with real images", where=f"model {model.name}: workload",
                            actual=None if work is None else f"{work.kind}: {work.path}",
                            expected="workload: {files: <folder of JPEG/PNG files>}",
                            fix="add a folder of typical images to the spec (a few dozen are enough)")
        return BenchTarget(model=model.name, inputs=(TensorSpec(model.image_input, "BYTES", lead + (1,)),),
                           outputs=("probabilities", "label"), url=url, protocol=protocol,
                           samples=(work.kind, work.path))
    inputs = tuple(TensorSpec(t.name, t.dtype, lead + model.shape(model.triton_dims_named(t), "opt"))
                   for t in model.inputs)
    if work is None:
        return BenchTarget(model=model.name, inputs=inputs, outputs=outputs, url=url, protocol=protocol)
    if work.kind == "texts":
        return BenchTarget(model=model.name, inputs=inputs, outputs=outputs, url=url, protocol=protocol,
                           texts=load_texts(work.path))
    if work.kind == "data":   # the samples' own shapes (e.g. their sequence length), not the axes' opt sizes
        from .samples import item_shapes
        shapes = item_shapes(work.path, tuple(t.name for t in model.inputs))
        inputs = tuple(TensorSpec(t.name, t.dtype, lead + shapes[t.name]) for t in model.inputs)
    return BenchTarget(model=model.name, inputs=inputs, outputs=outputs, url=url, protocol=protocol,
                       samples=(work.kind, work.path))
