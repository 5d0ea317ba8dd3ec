"""Training throughput (images/s) and peak memory of the MSKdeX objective.

Runs real optimisation steps (G, F, both critics, all losses) on batches of a small toy
prepared dataset resampled to the configuration's image size; content does not change
the cost. Prints one line per variant: the median over rounds that alternate the
variants, and the median ratio to the first (baseline) variant in the same process. The
baseline is fp32 without channels_last; the second adds channels_last (the small config's default);
on CUDA also bf16 autocast (``amp_bf16``), with --compile torch.compile, all with the
deterministic kernels training uses there, and last the baseline without them (their cost). The paper's anchor:
4 min/epoch for 404 images of 512^2 at batch 2 on an RTX A6000, about 1.7 images/s.

    python benchmarks/bench_training.py --config small --steps 8 --rounds 10
    python benchmarks/bench_training.py --config paper --steps 3 --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from MSKdeXTraining.training.config import load_config, parse_overrides
from MSKdeXTraining.training.data import PreparedDataset
from MSKdeXTraining.training.distributed import DistInfo, pick_device
from MSKdeXTraining.training.toy import write_toy_dataset
from MSKdeXTraining.training.trainer import build_training, deterministic_kernels, normalisation

PAPER_IMAGES_PER_S = 404 / (4 * 60)


def stepper(config, data, device: torch.device, warmup: int, deterministic: bool = True
            ) -> tuple[Callable[[int], float], float]:
    """A function timing ``n`` steps of ``config`` (seconds), after ``warmup`` untimed steps,
    and the peak memory the variant took (MiB; CUDA only, else NaN). ``deterministic``: inside
    :func:`deterministic_kernels`, as training runs."""
    info = DistInfo(0, 1, 0, device)
    ds = PreparedDataset(data, size=config.size)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    parts = build_training(config, len(ds.objects), ds.bone_index, info)
    norm = normalisation(ds)
    norm.scale = norm.scale.to(device)
    parts.objective.norm = norm
    loader = DataLoader(ds, batch_size=config.batch_size, shuffle=False, drop_last=True)
    batches = [b for _, b in zip(range(2), loader)]

    def run(n: int) -> float:
        with deterministic_kernels(device) if deterministic else contextlib.nullcontext():
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for k in range(n):
                parts.objective.step(batches[k % len(batches)], config.lambda_is)
            if cuda:
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

    run(warmup)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20 if cuda else float("nan")
    return run, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small", help="built-in config name or YAML/JSON file")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:K")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, caches)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, parse_overrides(args.set))
    device = pick_device(args.device)
    fp32 = dict(amp_bf16=False, channels_last=False, compile=False)
    variants = [("baseline fp32", fp32, True),
                ("channels_last (fp32)", {**fp32, "channels_last": True}, True)]
    if device.type == "cuda":
        variants.append(("channels_last + bf16", {**fp32, "channels_last": True, "amp_bf16": True}, True))
        if args.compile:
            variants.append(("channels_last + compile (fp32)", {**fp32, "channels_last": True, "compile": True}, True))
        variants.append(("baseline, nondeterministic kernels", fp32, False))
    print(f"config {config.name}: image {config.size}, batch {config.batch_size}, G HRNet "
          f"width {config.g_width} x {config.g_branches} branches, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads"))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_dataset(tmp, n_cases=max(2, config.batch_size), size=64)
        runs = [stepper(dataclasses.replace(config, **flags), data, device, args.warmup, deterministic)
                for _, flags, deterministic in variants]
        # Rounds alternate the variants, so a machine whose speed drifts slows them alike.
        times = [[run(args.steps) for run, _ in runs] for _ in range(args.rounds)]
        for v, (name, _, _) in enumerate(variants):
            ips = args.steps * config.batch_size / statistics.median(t[v] for t in times)
            ratio = statistics.median(t[0] / t[v] for t in times)
            memory = f"  peak memory {runs[v][1]:8.0f} MiB" if device.type == "cuda" else ""
            print(f"{name:34s} {ips:8.2f} images/s  x{ratio:5.2f} vs baseline  "
                  f"x{ips / PAPER_IMAGES_PER_S:6.2f} vs paper (1.68 img/s){memory}")
    if device.type != "cuda":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"process peak memory (all variants) {rss:.0f} MiB")

if __name__ == "__main__":
    main()
