"""Benchmark of the object-wise DRR projector (not a test).

Renders the 27 channels (WVDRR, VDRR, MDRR x 9 objects) of a synthetic 256^3 CT at 1 mm on
a 256^2 detector and compares with a straightforward per-channel ray-marching baseline
(trilinear sampling with torch grid_sample, 500 steps per ray, one channel at a time),
timed in the same run. Then measures the peak RSS of a whole render of a 512x512x300 CT
in a subprocess. Targets (issue 2): 27 channels <= 2 s, >= 20x the baseline, RSS <= 3 GB.

    .venv/bin/python benchmarks/bench_projector.py [--baseline-channels 27] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from MSKdeXTraining.drr import render_drr
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose
from MSKdeXTraining.imaging.projector import project_objects
from MSKdeXTraining.imaging.volume import Volume
from MSKdeXTraining.objects import load_object_map

#: (label in the synthetic map, centre as fraction of the grid (i, j, k), radii as fraction, HU)
OBJECTS = [(11, (0.30, 0.62, 0.55), (0.12, 0.14, 0.22), 45), (13, (0.70, 0.55, 0.62), (0.12, 0.12, 0.18), 50),
           (15, (0.30, 0.45, 0.68), (0.07, 0.08, 0.10), 48), (17, (0.62, 0.35, 0.72), (0.08, 0.10, 0.16), 42),
           (19, (0.42, 0.50, 0.30), (0.07, 0.06, 0.07), 40), (21, (0.58, 0.30, 0.32), (0.05, 0.06, 0.09), 44),
           (1, (0.50, 0.50, 0.60), (0.30, 0.16, 0.14), 500), (3, (0.72, 0.48, 0.30), (0.06, 0.06, 0.26), 900),
           (2, (0.50, 0.72, 0.62), (0.08, 0.06, 0.14), 450)]


def phantom(shape_kji: tuple[int, int, int], spacing_mm: float) -> tuple[Volume, Volume]:
    """Body (fat/soft tissue) with 9 ellipsoidal objects labelled per the 'synthetic' map."""
    nk, nj, ni = shape_kji
    ct = np.full(shape_kji, -1000, np.int16)
    labels = np.zeros(shape_kji, np.uint8)
    j, i = np.ogrid[:nj, :ni]
    body = ((i - ni / 2) / (0.46 * ni)) ** 2 + ((j - nj / 2) / (0.40 * nj)) ** 2 < 1
    ct[:, body] = -90
    n = np.array([ni, nj, nk])
    for value, c, r, hu in OBJECTS:
        c, r = np.array(c) * n, 1.45 * np.array(r) * n
        lo, hi = np.maximum(0, (c - r).astype(int)), np.minimum(n, (c + r).astype(int) + 1)
        kk, jj, ii = np.ogrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        inside = ((ii - c[0]) / r[0]) ** 2 + ((jj - c[1]) / r[1]) ** 2 + ((kk - c[2]) / r[2]) ** 2 < 1
        box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        labels[box][inside] = value
        ct[box][inside] = hu
    vol = Volume(ct, (spacing_mm,) * 3, (0.0, 0.0, 0.0), np.eye(3))
    return vol, vol.with_array(labels)


def baseline(ct: Volume, labels: Volume, geometry: Geometry, pose: np.ndarray, channels: int,
             steps: int = 500) -> float:
    """Seconds per channel of trilinear ray marching (grid_sample), one channel at a time."""
    from MSKdeXTraining.imaging import hu

    omap = load_object_map("synthetic")
    table = omap.lookup_table(labels.array)
    obj = table[labels.array]
    hu_t = torch.from_numpy(ct.array.astype(np.float32))
    quantities = [hu.attenuation(hu_t), torch.ones_like(hu_t), hu.mdrr_density(hu_t, False)]
    cam_to_index = np.linalg.inv(pose @ ct.affine)
    u0, v0 = geometry.detector_origin
    u = u0 + np.arange(geometry.cols) * geometry.pixel_spacing[1]
    v = v0 + np.arange(geometry.rows) * geometry.pixel_spacing[0]
    uu, vv = np.meshgrid(u, v)
    ends = np.stack([uu, vv, np.full_like(uu, geometry.sdd)], -1).reshape(-1, 3)
    z_iso = geometry.sod
    half = 0.5 * np.linalg.norm(np.array(ct.array.shape) * ct.spacing)
    t = np.linspace((z_iso - half) / geometry.sdd, (z_iso + half) / geometry.sdd, steps)
    size = np.array(ct.array.shape[::-1], float)
    start = time.perf_counter()
    for c in range(channels):
        k, q = divmod(c, 3)
        volume = torch.where(torch.from_numpy(obj == k), quantities[q], 0.0)[None, None]
        image = torch.zeros(ends.shape[0])
        for rows in np.array_split(np.arange(ends.shape[0]), 16):
            pts = ends[rows, None, :] * t[None, :, None]  # (R, steps, 3) camera mm
            idx = pts @ cam_to_index[:3, :3].T + cam_to_index[:3, 3]
            grid = torch.from_numpy((2 * (idx + 0.5) / size - 1).astype(np.float32))
            vals = F.grid_sample(volume, grid[None, None], mode="bilinear", align_corners=False)
            image[rows] = vals[0, 0, 0].sum(-1)
    return (time.perf_counter() - start) / channels


def peak_rss_child(shape: tuple[int, int, int]) -> None:
    """Render a whole CT of ``shape`` (k, j, i) and print the process' peak RSS (bytes)."""
    ct, labels = phantom(shape, 0.8)
    geometry = Geometry(rows=256, cols=256, pixel_spacing=(2.0, 2.0))
    start = time.perf_counter()
    result = render_drr(ct, labels, load_object_map("synthetic"), geometry)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "object_voxels": int(sum(r["voxels"] for r in result.metrics["objects"])),
                      "max_rel_error": result.metrics["max_rel_error"],
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-channels", type=int, default=3,
                        help="channels the baseline renders (its per-channel time is scaled to 27)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--rss-child", nargs=3, type=int, metavar=("K", "J", "I"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        peak_rss_child(tuple(args.rss_child))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"load average {os.getloadavg()}")
    ct, labels = phantom((256, 256, 256), 1.0)
    omap = load_object_map("synthetic")
    geometry = Geometry(rows=256, cols=256, pixel_spacing=(1.6, 1.6))
    pose = default_ap_pose(ct.center, geometry)
    counts = np.bincount(labels.array.ravel(), minlength=32)
    print(f"CT 256^3 at 1 mm, {int(counts[1:].sum())} object voxels in 9 objects, detector 256^2")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stack = project_objects(ct, labels, omap, geometry, pose, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    err = np.abs(stack.volume_cm3 / (np.array([counts[list(o.labels)].sum() for o in omap.objects]) / 1000) - 1).max()
    ours = min(times)
    print(f"projector: 27 channels in {ours:.3f} s (best of {args.repeats}: "
          f"{', '.join(f'{t:.3f}' for t in times)}); max volume error {err:.2e}; "
          f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    per_channel = baseline(ct, labels, geometry, pose, args.baseline_channels)
    print(f"baseline ray marching (500 steps, trilinear, grid_sample): {per_channel:.3f} s/channel "
          f"over {args.baseline_channels} channels -> {27 * per_channel:.1f} s for 27; "
          f"ratio {27 * per_channel / ours:.1f}x")
    child = subprocess.run([sys.executable, __file__, "--rss-child", "300", "512", "512"]
                           + (["--threads", str(args.threads)] if args.threads else []),
                           capture_output=True, text=True, check=True)
    info = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"512x512x300 CT (0.8 mm), {info['object_voxels']} object voxels: whole render + metrics "
          f"{info['seconds']:.2f} s, peak RSS {info['peak_rss_bytes'] / 2**30:.2f} GB, "
          f"max sum error {info['max_rel_error']:.1e}")
    print(f"targets: 27 channels <= 2 s: {'met' if ours <= 2 else 'MISSED'}; >= 20x baseline: "
          f"{'met' if 27 * per_channel / ours >= 20 else 'MISSED'}; peak RSS <= 3 GB: "
          f"{'met' if info['peak_rss_bytes'] <= 3 * 2**30 else 'MISSED'}")


if __name__ == "__main__":
    main()
