"""Latency of ``decompose`` per radiograph (not a test).

Times, for one radiograph and a trained run folder, the stages of
:meth:`MSKdeXTraining.inference.Decomposer.decompose`: reading the file, the whole
decomposition with test-time augmentation (``--tta``, default 8) and the baseline without
augmentation (tta = 1), each the median of ``--repeat`` runs in this process, plus their ratio.

    .venv/bin/python benchmarks/bench_decompose.py --model RUN --xray FILE [--pixel-spacing MM]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from MSKdeXTraining.inference import Decomposer
from MSKdeXTraining.radiograph_io import read_radiograph


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--xray", required=True)
    p.add_argument("--pixel-spacing", type=float, nargs="+")
    p.add_argument("--tta", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    spacing = tuple(a.pixel_spacing) if a.pixel_spacing else None
    t0 = time.perf_counter()
    dec = Decomposer.from_run(a.model)
    load = time.perf_counter() - t0
    read = _median_seconds(lambda: read_radiograph(a.xray, spacing), a.repeat)
    radiograph = read_radiograph(a.xray, spacing)
    dec.decompose(radiograph, tta=1)  # warm-up
    base = _median_seconds(lambda: dec.decompose(radiograph, tta=1), a.repeat)
    full = _median_seconds(lambda: dec.decompose(radiograph, tta=a.tta), a.repeat)
    print(f"model grid {dec.geometry.rows}x{dec.geometry.cols}, {len(dec.names)} objects, "
          f"torch threads {torch.get_num_threads()}")
    print(f"load model      {load * 1000:8.1f} ms (once)")
    print(f"read radiograph {read * 1000:8.1f} ms")
    print(f"decompose tta=1 {base * 1000:8.1f} ms (baseline)")
    print(f"decompose tta={a.tta} {full * 1000:8.1f} ms  ratio {full / base:.2f}x baseline")


if __name__ == "__main__":
    main()
