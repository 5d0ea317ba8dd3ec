"""The end-to-end demo: synthetic cohort -> prepared dataset -> training -> held-out evaluation.

``OUT/cohort`` (``generate_cohort`` from the bundled anatomy), ``OUT/dataset``
(``prepare_dataset``: registration, DRRs), ``OUT/evaluation`` (fold 0 of a K-fold split by
patient: the small configuration trained on the other folds, scored on the held-out
patients, report.html with figures; the report pools every finished fold there, e.g. all four
after ``mskdex evaluate`` into the same folder). Every stage is resumable, so re-running with
the same ``out`` continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..progress import Progress, part, silent
from .crossval import Predictions, evaluate

#: Share of the total time each stage takes (for the progress fraction).
STAGES = (("cohort", 0.15), ("prepare", 0.35), ("evaluate", 0.5))


def run_demo(out: Path, n: int = 96, seed: int = 0, config: str | Path = "small",
             k: int = 4, size: str = "demo", workers: int | None = None,
             overrides: dict | None = None, registration: str = "accurate", dataset_px: int = 128,
             progress: Progress | None = None) -> Predictions:
    """Run (or continue) the demo in ``out``; returns the held-out predictions.

    ``n`` synthetic patients, cohort ``seed``, training ``config`` (+ ``overrides``), ``k``
    folds of which fold 0 is held out, cohort resolution preset ``size``, ``workers``
    processes for the cohort and preparation (default: all cores), bone ``registration``
    preset (``fast`` or ``accurate``), dataset detector ``dataset_px`` pixels square (same
    field of view as the radiographs).
    """
    from ..cohort import generate_cohort
    from ..imaging.registration import RegistrationSettings
    from ..prepare import dataset_geometry, prepare_dataset
    from ..training.config import load_config

    out = Path(out)
    if not 2 <= k <= n // 2:  # checked before any work; a few cases may be excluded later
        raise InputError(f"--k {k} folds of --n {n} patients: need 2 <= k <= n / 2 (each fold holds "
                         "at least two patients)")
    RegistrationSettings.preset(registration)
    load_config(config, overrides)
    report = progress or silent
    starts, acc = {}, 0.0
    for name, share in STAGES:
        starts[name], acc = (acc, share), acc + share

    def stage(name: str) -> Progress:
        base, share = starts[name]
        return part(report, base, share, f"{name}: ")

    cohort = generate_cohort(n, seed, out / "cohort", size=size, workers=workers,
                             progress=stage("cohort"))
    dataset = prepare_dataset(cohort, out / "dataset", dataset_geometry(cohort, dataset_px, dataset_px),
                              workers=workers, settings=RegistrationSettings.preset(registration),
                              progress=stage("prepare"))
    return evaluate(Path(dataset), out / "evaluation", config, overrides, k, folds=[0],
                    title="MSKdeX demo: synthetic cohort, held-out patients",
                    progress=stage("evaluate"))
