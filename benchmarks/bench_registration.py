"""Accuracy and speed of bone 2D/3D registration on a synthetic cohort with known poses.

For every case the whole patient starts displaced from its true pelvis pose by a random rigid
offset (uniform, up to +-OFFSET_MM per axis and +-OFFSET_DEG per angle, about the pelvis
centroid; sampled from --seed before any registration); the pelvis is registered from there,
then each femur from the registered pelvis (``register_bodies``). Errors are measured at the
bone's surface voxels against the truth poses of the cohort:

* projected error: mean 2D distance on the detector (mm) with the true vs found pose;
* mTRE: mean 3D distance (mm); depth: its component along the central ray (mm);
* success: mTRE < 5 mm; time: seconds per bone (this process, torch threads as given).

Targets (issue 4): median projected <= 0.5 mm, median mTRE <= 3 mm, success >= 95 % pelvis and
>= 90 % each femur, <= 10 s per bone (accurate preset). With --preset both, the fast preset's
time is also printed as a ratio to the accurate one (same process, same cases).

    python benchmarks/bench_registration.py --cohort COHORT [--cases 30] [--preset both]
        [--femur-restarts on|off|both]
    python benchmarks/bench_registration.py --generate 30 --out /tmp/cohort   # makes one first
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from MSKdeXTraining.cohort.generate import GENERATOR_VERSION
from MSKdeXTraining.imaging.geometry import apply, rigid
from MSKdeXTraining.imaging.registration import (
    PRESETS, RegistrationSettings, body_centroid, read_xray, register_bodies, registration_errors,
    rigid_bodies, surface_points)
from MSKdeXTraining.imaging.volume import read_ct, read_labels
from MSKdeXTraining.objects import ObjectMap
from MSKdeXTraining.prepare import read_cohort

OFFSET_MM = 15.0
OFFSET_DEG = 10.0
SUCCESS_MTRE_MM = 5.0
TARGETS = {"projected_mm": 0.5, "mtre_mm": 3.0, "seconds": 10.0,
           "success": {"pelvis": 0.95, "femur_left": 0.90, "femur_right": 0.90}}


def run_case(case: Path, objects: ObjectMap, offset: np.ndarray, settings: RegistrationSettings
             ) -> dict[str, dict]:
    """Register one case from its truth pelvis pose displaced by ``offset`` (deg x3, mm x3)."""
    ct, labels = read_ct(case / "ct.nii.gz"), read_labels(case / "labels.nii.gz")
    xray, geometry = read_xray(case / "xray.mha")
    truth = {k: np.array(v) for k, v in json.loads((case / "truth.json").read_text())["poses"].items()}
    bodies = rigid_bodies(objects)
    centre = apply(truth["pelvis"], body_centroid(labels, bodies["pelvis"]))
    start = rigid(offset[:3], offset[3:], centre) @ truth["pelvis"]
    results = register_bodies(ct, labels, objects, xray, geometry, start, settings)
    out = {}
    for name, r in results.items():
        e = registration_errors(truth[name], r.pose, surface_points(labels, bodies[name]), geometry)
        out[name] = {**e, "gc": r.gc, "ok": r.ok, "seconds": r.seconds}
    return out


def summarise(rows: list[dict[str, dict]], preset: str) -> dict[str, dict]:
    print(f"\npreset {preset!r}: {len(rows)} cases")
    print(f"{'body':12s} {'proj mm':>8s} {'mTRE mm':>8s} {'depth mm':>9s} {'success':>8s} "
          f"{'s/bone':>7s} {'GC ok':>6s} {'GC fail':>8s} {'flagged':>8s}")
    summary = {}
    for name in rows[0]:
        r = {k: np.array([row[name][k] for row in rows]) for k in rows[0][name]}
        good = r["mtre_mm"] < SUCCESS_MTRE_MM
        s = {"projected_mm": float(np.median(r["projected_mm"])),
             "mtre_mm": float(np.median(r["mtre_mm"])), "depth_mm": float(np.median(r["depth_mm"])),
             "success": float(good.mean()), "seconds": float(np.median(r["seconds"])),
             "flagged": float((~r["ok"]).mean())}
        gc_ok = f"{np.median(r['gc'][good]):.3f}" if good.any() else "-"
        gc_bad = f"{np.median(r['gc'][~good]):.3f}" if (~good).any() else "-"
        print(f"{name:12s} {s['projected_mm']:8.2f} {s['mtre_mm']:8.2f} {s['depth_mm']:9.2f} "
              f"{100 * s['success']:7.1f}% {s['seconds']:7.2f} {gc_ok:>6s} {gc_bad:>8s} "
              f"{100 * s['flagged']:7.1f}%")
        summary[name] = s
    return summary


def check(summary: dict[str, dict]) -> None:
    for name, s in summary.items():
        verdict = [
            f"proj {'PASS' if s['projected_mm'] <= TARGETS['projected_mm'] else 'FAIL'}",
            f"mTRE {'PASS' if s['mtre_mm'] <= TARGETS['mtre_mm'] else 'FAIL'}",
            f"success {'PASS' if s['success'] >= TARGETS['success'][name] else 'FAIL'}",
            f"time {'PASS' if s['seconds'] <= TARGETS['seconds'] else 'FAIL'}"]
        print(f"  {name:12s} " + ", ".join(verdict))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, help="existing cohort (mskdex-cohort v1)")
    ap.add_argument("--generate", type=int, help="generate a cohort of this many cases first")
    ap.add_argument("--out", type=Path, default=Path("bench_cohort"), help="where --generate writes")
    ap.add_argument("--size", default="demo", help="cohort size preset for --generate")
    ap.add_argument("--cases", type=int, default=30, help="cases to use (the first ones)")
    ap.add_argument("--preset", default="both", choices=PRESETS + ("both",))
    ap.add_argument("--seed", type=int, default=0, help="seed of the start offsets")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--femur-restarts", default="on", choices=("on", "off", "both"),
                    help="the femurs' flexion restarts; both: each case with and without, alternating")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cohort = args.cohort
    if args.generate:
        from MSKdeXTraining.cohort import generate_cohort
        cohort = generate_cohort(args.generate, 1, args.out, size=args.size)
    if cohort is None:
        ap.error("give --cohort DIR or --generate N")
    meta, objects = read_cohort(cohort)
    cases = [cohort / c for c in meta["cases"][: args.cases]]
    rng = np.random.default_rng(args.seed)
    offsets = rng.uniform(-1, 1, (len(cases), 6)) * np.array([OFFSET_DEG] * 3 + [OFFSET_MM] * 3)
    presets = PRESETS if args.preset == "both" else (args.preset,)
    size, made_by = meta.get("size_settings", {}), meta.get("generator", {}).get("version")
    if made_by != GENERATOR_VERSION:
        print(f"WARNING: {cohort} was made by cohort generator v{made_by}, this code makes "
              f"v{GENERATOR_VERSION}: regenerate it to measure the current product")
    print(f"{len(cases)} cases of {cohort} (generator v{made_by}; CT {size.get('ct_spacing_mm')} mm, "
          f"detector {size.get('detector_px')} px of {size.get('pixel_mm', float('nan')):.2f} mm), "
          f"start offsets up to +-{OFFSET_MM:g} mm / "
          f"+-{OFFSET_DEG:g} deg (seed {args.seed}), torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    restarts = {"on": ("on",), "off": ("off",), "both": ("off", "on")}[args.femur_restarts]
    times = {}
    for preset in presets:
        settings = {r: RegistrationSettings.preset(preset) for r in restarts}
        if "off" in settings:
            settings["off"] = replace(settings["off"], femur_restarts=())
        t0 = time.perf_counter()
        rows: dict[str, list] = {r: [] for r in restarts}
        for case, offset in zip(cases, offsets):
            for r in restarts:  # alternating case by case: drifts of the machine's speed hit both
                rows[r].append(run_case(case, objects, offset, settings[r]))
                print(f"  {case.name}{'' if len(restarts) == 1 else f' (femur restarts {r})'}: " + "  ".join(
                    f"{n} {v['projected_mm']:.2f}/{v['mtre_mm']:.2f} mm GC {v['gc']:.3f} {v['seconds']:.1f} s"
                    for n, v in rows[r][-1].items()), flush=True)
        times[preset] = time.perf_counter() - t0
        for r in restarts:
            check(summarise(rows[r], preset if len(restarts) == 1 else f"{preset}, femur restarts {r}"))
        if len(restarts) == 2:
            print("median over the cases of each case's time with / without the femur restarts: " + ", ".join(
                f"{n} {np.median([on[n]['seconds'] / off[n]['seconds'] for on, off in zip(rows['on'], rows['off'])]):.2f}"
                for n in rows["on"][0]))
        print(f"load average after {preset!r}: {os.getloadavg()[0]:.1f}")
    if len(presets) == 2 and len(restarts) == 1:
        print(f"\nwall time: accurate {times['accurate']:.1f} s, fast {times['fast']:.1f} s "
              f"(fast/accurate = {times['fast'] / times['accurate']:.2f})")


if __name__ == "__main__":
    main()
