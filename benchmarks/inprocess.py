"""In-process throughput: the limit a served figure is compared with (served_vs_inprocess.py and
examples_served_vs_inprocess.py). Python threads each drive their own runner (ONNX Runtime releases the GIL
while it runs), so N sessions x 1 thread and 1 session x N threads are both measurable."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence


def throughput(runs: Sequence[Callable[[list], object]], items: Sequence, batch_sizes, seconds: float) -> dict[int, float]:
    """Items/s with every runner busy for `seconds`, per batch size (each runner warmed once first)."""
    result = {}
    for bs in batch_sizes:
        done = [0] * len(runs)

        def worker(k: int, deadline: float) -> None:
            i = k * 7
            while time.perf_counter() < deadline:
                runs[k]([items[(i + j) % len(items)] for j in range(bs)])
                i += bs
                done[k] += bs
        for run in runs:
            run(list(items[:bs]))
        start = time.perf_counter()
        workers = [threading.Thread(target=worker, args=(k, start + seconds)) for k in range(len(runs))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        result[bs] = sum(done) / (time.perf_counter() - start)
    return result
