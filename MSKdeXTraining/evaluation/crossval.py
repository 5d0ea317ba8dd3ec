"""K-fold cross-validation by patient (paper Sec. 3): train, predict held-out cases, score.

Layout written by :func:`evaluate` (every stage resumable: a fold whose predictions exist and
were made by its model's present weights is not redone, training continues from its last
checkpoint)::

    OUT/fold_<i>/run/              model run folder of fold i (``mskdex train --fold i/K``),
                                   with calibration.json from its held-out cases (intervals)
    OUT/fold_<i>/predictions.json  held-out cases of fold i: true and predicted volume (cm3)
                                   and mass (g) per object, PSNR/SSIM of the aligned bones,
                                   the SHA-256 of the weights that made them
    OUT/predictions.csv            all folds, one row per case and object
    OUT/metrics.csv, metrics.md    per object PCC, ICC(2,1), MAE; bone PSNR/SSIM; ANOVA
    OUT/*.png, OUT/report.html     figures and the self-contained report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..calibration import write_calibration
from ..errors import InputError
from ..fileio import file_sha256, read_format_json, read_json_object, write_json
from ..objects import DEFAULT_MUSCLES
from ..progress import Progress
from . import metrics

if TYPE_CHECKING:
    import torch

PRED_FORMAT = "mskdex-predictions"
PRED_VERSION = 1
#: Columns of predictions.csv: one row per case and object (cm3, g).
ROW_HEADER = ["case", "patient", "fold", "object", "kind", "volume_true_cm3", "volume_pred_cm3",
              "mass_true_g", "mass_pred_g"]


@dataclass
class Predictions:
    """Held-out predictions of one or more folds: arrays (M cases, N objects) in cm3 and g."""

    ids: list[str]
    patients: list[str]
    folds: np.ndarray
    names: list[str]
    kinds: list[str]
    aligned_bones: list[str]
    volume_true: np.ndarray
    volume_pred: np.ndarray
    mass_true: np.ndarray
    mass_pred: np.ndarray
    image: list[dict]  # per case: {bone: {drr_type: {"psnr", "ssim"}}}

    @classmethod
    def from_json(cls, docs: list[dict]) -> Predictions:
        cases = [(d["fold"], c) for d in docs for c in d["cases"]]
        first = docs[0]
        arr = lambda key: np.array([c[key] for _, c in cases], float).reshape(len(cases), -1)
        return cls([c["id"] for _, c in cases], [str(c["patient"]) for _, c in cases],
                   np.array([f for f, _ in cases], int), list(first["objects"]), list(first["kinds"]),
                   list(first["aligned_bones"]), arr("volume_true_cm3"), arr("volume_pred_cm3"),
                   arr("mass_true_g"), arr("mass_pred_g"), [c["image"] for _, c in cases])

    def rows(self) -> list[list]:
        """Long format, columns :data:`ROW_HEADER`."""
        return [[cid, self.patients[m], int(self.folds[m]), n, self.kinds[i],
                 self.volume_true[m, i], self.volume_pred[m, i], self.mass_true[m, i], self.mass_pred[m, i]]
                for m, cid in enumerate(self.ids) for i, n in enumerate(self.names)]

    def object_metrics(self) -> list[dict]:
        """Per object: agreement (n, pcc, icc, mae) of mass (g), volume (cm3) and density
        (mass / volume, g/cm3: for a muscle its lean mass per cm3, which fat infiltration
        lowers), the last over the cases where both densities are finite."""
        def density(i: int) -> dict[str, float]:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                pred = self.mass_pred[:, i] / self.volume_pred[:, i]
                true = self.mass_true[:, i] / self.volume_true[:, i]
            keep = np.isfinite(pred) & np.isfinite(true)
            return metrics.agreement(pred[keep], true[keep])
        return [{"object": n, "kind": self.kinds[i],
                 "mass": metrics.agreement(self.mass_pred[:, i], self.mass_true[:, i]),
                 "volume": metrics.agreement(self.volume_pred[:, i], self.volume_true[:, i]),
                 "density": density(i)}
                for i, n in enumerate(self.names)]

    def mean_muscle_pcc(self, quantity: str = "mass") -> float:
        """Mean PCC over the paper's six muscles present in this model (or all muscles)."""
        per = {m["object"]: m[quantity]["pcc"] for m in self.object_metrics() if m["kind"] == "muscle"}
        chosen = [per[n] for n in DEFAULT_MUSCLES if n in per] or list(per.values())
        return float(np.nanmean(chosen)) if chosen else float("nan")

    def image_metrics(self) -> list[dict]:
        """Per aligned bone and DRR type: mean PSNR (dB) and SSIM over the cases."""
        out = []
        for bone in self.aligned_bones:
            for dtype in self.image[0][bone]:
                vals = np.array([[c[bone][dtype]["psnr"], c[bone][dtype]["ssim"]] for c in self.image])
                finite = np.isfinite(vals[:, 0])
                out.append({"bone": bone, "drr_type": dtype,
                            "psnr": float(vals[finite, 0].mean()) if finite.any() else float("nan"),
                            "ssim": float(np.nanmean(vals[:, 1]))})
        return out


def predict_cases(run: Path, dataset: Path, ids: list[str], fold: int = 0,
                  progress: Progress | None = None, device: str | torch.device = "cpu") -> dict:
    """Predict the cases ``ids`` of a prepared dataset with the model in ``run`` on ``device``
    (no test-time augmentation); returns the predictions document (format
    ``mskdex-predictions`` v1)."""
    from ..inference import Decomposer
    from ..modelio import load_model
    from ..training.data import PreparedDataset

    report = progress or (lambda f, m: None)
    model = load_model(run, device=device)
    decomposer = Decomposer(model)
    data = PreparedDataset(dataset, ids, size=model.geometry.shape, cache_bytes=0)  # each read once
    area = model.geometry.pixel_area_cm2
    bones = list(data.manifest["aligned_bones"])
    bone_index = [decomposer.names.index(b) for b in bones]
    case_patient = {c["id"]: c["patient"] for c in data.manifest["cases"]}
    cases = []
    for m, cid in enumerate(data.ids):
        item = data.load(m)
        pred = decomposer.predict(item["xray"].numpy())[0]  # (3, N, H, W)
        sums = pred.astype(np.float64).sum(axis=(-1, -2)) * area
        aligned = item["aligned"].numpy()
        ok = item["aligned_ok"].tolist()  # a failed registration's DRR is no reference: NaN
        image = {b: {t: {"psnr": metrics.psnr(pred[k, bone_index[j]], aligned[k, j]) if ok[j] else float("nan"),
                         "ssim": metrics.ssim(pred[k, bone_index[j]], aligned[k, j]) if ok[j] else float("nan")}
                     for k, t in enumerate(decomposer.drr_types)} for j, b in enumerate(bones)}
        cases.append({"id": cid, "patient": case_patient[cid],
                      "volume_true_cm3": item["volume_cm3"].tolist(),
                      "volume_pred_cm3": sums[decomposer.drr_types.index("vdrr")].tolist(),
                      "mass_true_g": item["mass_g"].tolist(),
                      "mass_pred_g": sums[decomposer.drr_types.index("mdrr")].tolist(),
                      "image": image})
        report((m + 1) / len(data.ids), f"predicted {cid}")
    return {"format": PRED_FORMAT, "version": PRED_VERSION, "run": str(run),
            "weights_sha256": model.origin["weights_sha256"], "fold": fold,
            "objects": decomposer.names, "kinds": decomposer.kinds, "aligned_bones": bones,
            "drr_types": decomposer.drr_types, "units": {"volume": "cm3", "mass": "g", "psnr": "dB"},
            "cases": cases}


def calibrate_run(run: Path, dataset: Path, progress: Progress | None = None,
                  device: str | torch.device = "cpu") -> Path:
    """Write ``run/calibration.json`` from the model's held-out cases (``model.json`` split
    ``test_ids``, trained with ``--fold k/K``) of the prepared dataset it was trained on,
    predicted on ``device``."""
    from ..modelio import check_dataset, read_meta
    from ..training.data import read_manifest

    run, dataset = Path(run), Path(dataset)
    meta = read_meta(run)
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    ids = split.get("test_ids") or []
    if not ids:
        raise InputError(f"{run / 'model.json'}: field 'split' holds no held-out cases (test_ids): the "
                         "model was trained on every case, so nothing can calibrate its intervals; train "
                         "with --fold k/K (or run `mskdex evaluate`, whose fold models are calibrated)")
    check_dataset(meta, read_manifest(dataset), str(run / "model.json"))
    return write_calibration(run, predict_cases(run, dataset, ids, fold=(split.get("fold") or [0])[0],
                                                progress=progress, device=device))


def read_predictions(path: Path) -> dict:
    """Read a predictions document, checking its format and version."""
    return read_format_json(path, PRED_FORMAT, PRED_VERSION)


def load_predictions(out: Path) -> Predictions:
    """All ``fold_*/predictions.json`` under an evaluation folder."""
    files = sorted(Path(out).glob("fold_*/predictions.json"))
    if not files:
        raise FileNotFoundError(f"{out}: no fold_*/predictions.json; run `mskdex evaluate` first")
    return Predictions.from_json([read_predictions(f) for f in files])


def run_folds(dataset: Path, out: Path, config: str | Path = "small", overrides: dict | None = None,
              k: int = 4, folds: list[int] | None = None,
              progress: Progress | None = None) -> Predictions:
    """Train and predict the folds ``folds`` (default all ``k``) of a K-fold split by patient
    (``split_folds`` with the config's ``fold_seed``); resumable: a finished fold is kept (its
    held-out cases are predicted again if its model's weights changed since), an interrupted
    training continues from its last checkpoint. A fold folder made with another config, K,
    dataset or split is refused, never reused. Each fold model gets its ``calibration.json``.
    Returns the predictions."""
    from ..training.config import load_config
    from ..training.data import read_manifest, split_folds
    from ..training.checkpoint import latest_checkpoint
    from ..training.distributed import pick_device
    from ..training.trainer import check_run_dataset, train

    report = progress or (lambda f, m: None)
    cfg = load_config(config, overrides)
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    splits = split_folds(manifest, k, seed=cfg.fold_seed)
    manifest_sha = file_sha256(dataset / "manifest.json")
    folds = sorted(set(range(k) if folds is None else folds))
    bad = [f for f in folds if not 0 <= f < k]
    if bad or not folds:
        raise InputError(f"folds must be in 0..{k - 1}, got {bad or 'none'}")
    for n, f in enumerate(folds):
        target = out / f"fold_{f}" / "predictions.json"
        # what the fold's results depend on (JSON-normalised, to compare with what was written)
        key = json.loads(json.dumps({"config": cfg.to_dict(), "k": k, "dataset": manifest_sha,
                                     "test_ids": splits[f][1]}))
        run = out / f"fold_{f}" / "run"
        if target.is_file() and _finished(target, run, key):
            continue
        span = 1.0 / len(folds)
        sub = lambda frac, msg, base=n * span: report(base + span * frac, f"fold {f}/{k}: {msg}")
        check_run_dataset(run, manifest)
        if (run / "model.json").is_file():
            meta = read_json_object(run / "model.json", ("config", "split"))
            _check_reuse(run / "model.json", {**key, "config": meta["config"],
                                              "test_ids": meta["split"].get("test_ids")}, key)
        else:
            train(cfg, dataset, run, fold=(f, k),
                  resume=latest_checkpoint(run / "checkpoints") is not None,
                  progress=lambda frac, msg: sub(0.9 * frac, msg))
        doc = predict_cases(run, dataset, splits[f][1], fold=f, device=pick_device(cfg.device),
                            progress=lambda frac, msg: sub(0.9 + 0.1 * frac, msg))
        write_calibration(run, doc)
        write_json(target, {**doc, "evaluation": key})
    report(1.0, "folds done")
    return Predictions.from_json([read_predictions(out / f"fold_{f}" / "predictions.json") for f in folds])


def _finished(target: Path, run: Path, key: dict) -> bool:
    """Whether a fold's predictions (``target``, made with the same ``key`` or refused) can be
    kept: made by the model's present weights (then calibrated, again or for the first time) or
    the model was removed since (kept uncalibrated). False: predict again (the model was
    trained on since, or the predictions predate the record of its weights)."""
    doc = read_predictions(target)
    _check_reuse(target, doc.get("evaluation"), key)
    weights = run / "model.safetensors"
    if not weights.is_file():
        return True
    if doc.get("weights_sha256") != file_sha256(weights):
        return False
    write_calibration(run, doc)
    return True


def _check_reuse(path: Path, found: dict | None, wanted: dict) -> None:
    """Refuse a fold's earlier result (``path``) made with other settings than ``wanted`` (the
    config's :data:`RUN_CONTROL_FIELDS` aside)."""
    from ..training.config import RUN_CONTROL_FIELDS

    def learnt(key: dict | None) -> dict | None:
        if not isinstance(key, dict) or not isinstance(key.get("config"), dict):
            return key
        return {**key, "config": {k: v for k, v in key["config"].items() if k not in RUN_CONTROL_FIELDS}}

    found, wanted = learnt(found), learnt(wanted)
    if found == wanted:
        return
    changed = sorted(k for k in wanted if (found or {}).get(k) != wanted[k])
    raise InputError(f"{path}: made with another {', '.join(changed)} than this evaluation; "
                     "choose another --out folder (or delete that fold's folder)")


def anova(a: Predictions, b: Predictions) -> list[dict]:
    """Per object: one-way ANOVA of the absolute errors of two evaluations on their common
    cases (mass and volume): F and p."""
    common = [i for i in a.ids if i in set(b.ids)]
    if len(common) < 2:
        raise InputError(f"the two evaluations share {len(common)} cases; need >= 2 for ANOVA")
    ia, ib = [a.ids.index(i) for i in common], [b.ids.index(i) for i in common]
    out = []
    for i, name in enumerate(a.names):
        j = b.names.index(name)
        row = {"object": name, "n": len(common)}
        for q, (pa, ta, pb, tb) in {"mass": (a.mass_pred, a.mass_true, b.mass_pred, b.mass_true),
                                    "volume": (a.volume_pred, a.volume_true, b.volume_pred, b.volume_true)}.items():
            ea, eb = np.abs(pa[ia, i] - ta[ia, i]), np.abs(pb[ib, j] - tb[ib, j])
            row[q] = dict(zip(("f", "p"), metrics.anova_oneway(ea, eb)),
                          mae_a=float(ea.mean()), mae_b=float(eb.mean()))
        out.append(row)
    return out


def case_images(run: Path, dataset: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radiograph (H, W), predicted DRRs and reference DRRs ((3, N, H, W), physical units) of
    one case on the model grid. The reference is the CT's DRR stack, with the aligned bone
    channels replaced by the DRRs at the registered pose (what the radiograph shows)."""
    from ..inference import Decomposer
    from ..modelio import load_model
    from ..training.data import PreparedDataset

    model = load_model(run)
    data = PreparedDataset(dataset, [case_id], size=model.geometry.shape, cache_bytes=0)
    item = data.load(0)
    xray = item["xray"][0].numpy()
    pred = Decomposer(model).predict(xray[None])[0]
    ref = item["drr"].numpy().copy()
    for j, b in enumerate(data.manifest["aligned_bones"]):
        ref[:, data.objects.index(b)] = item["aligned"][:, j].numpy()
    return xray, pred, ref


def evaluate(dataset: Path, out: Path, config: str | Path = "small", overrides: dict | None = None,
             k: int = 4, folds: list[int] | None = None, compare: Path | None = None,
             title: str = "MSKdeX cross-validation",
             progress: Progress | None = None) -> Predictions:
    """Cross-validate (see :func:`run_folds`), then write predictions.csv, the metric tables
    (CSV, Markdown), figures and report.html into ``out``. ``compare``: another evaluation
    folder whose absolute errors are compared per object by one-way ANOVA."""
    from .summary import write_evaluation

    report = progress or (lambda f, m: None)
    other = load_predictions(Path(compare)) if compare else None  # checked before any training
    preds = run_folds(dataset, out, config, overrides, k, folds,
                      progress=lambda f, m: report(0.95 * f, m))
    report(0.96, "writing the report")
    write_evaluation(Path(out), preds, Path(dataset), title=title, compare=other,
                     compare_label=Path(compare).name if compare else "")
    report(1.0, "evaluation done")
    return preds
