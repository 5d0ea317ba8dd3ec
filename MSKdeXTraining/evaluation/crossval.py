"""K-fold cross-validation by patient (paper Sec. 3): train, predict held-out cases, score.

Layout written by :func:`evaluate` (every stage resumable: a fold whose predictions exist and
were made by its model's present weights, or whose model was removed since, is not redone,
training continues from its last checkpoint)::

    OUT/fold_<i>/run/              model run folder of fold i (``mskdex train --fold i/K``),
                                   with calibration.json from its held-out cases (intervals)
    OUT/fold_<i>/predictions.json  held-out cases of fold i: true and predicted volume (cm3)
                                   and mass (g) per object, PSNR/SSIM of the aligned bones,
                                   the SHA-256 of the weights that made them
    OUT/predictions.csv            every finished fold of this run, one row per case and object
    OUT/metrics.csv, metrics.md    per object PCC, ICC(2,1), MAE; bone PSNR/SSIM; ANOVA
    OUT/*.png, OUT/report.html     figures and the self-contained report

The report pools every ``fold_*/predictions.json`` made with this run's config, K and dataset
(:func:`evaluate`), not only the folds a call trained or predicted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..calibration import write_calibration
from ..drr_types import volume_mass
from ..errors import InputError
from ..fileio import as_written, file_sha256, read_format_json, read_json_object, refuse_other_kind, write_json
from ..objects import DEFAULT_MUSCLES
from ..progress import Progress, part, silent
from . import metrics

if TYPE_CHECKING:
    import torch

    from ..training.config import TrainConfig

PRED_FORMAT = "mskdex-predictions"
PRED_VERSION = 1
#: What the agreement metrics score: lean/bone mass (g), volume (cm3), density (g/cm3).
AGREEMENT_QUANTITIES = ("mass", "volume", "density")
#: Fewer held-out patients than this: the scores get a warning (mostly chance).
FEW_PATIENTS = 10
#: Predictions whose SD (over the cases) is below this fraction of the truth's get a warning.
FLAT_SD_RATIO = 0.1
#: Columns of predictions.csv: one row per case and object (cm3, g).
ROW_HEADER = ["case", "patient", "fold", "object", "kind", "volume_true_cm3", "volume_pred_cm3",
              "mass_true_g", "mass_pred_g"]


@dataclass
class Predictions:
    """Held-out predictions of one or more folds: arrays (M cases, N objects) in cm3 and g
    (NaN where a prediction was not finite or was written as null); ``k`` the number of folds
    of the split (0: unknown), ``left_out`` why folds of it are not among them."""

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
    k: int = 0
    left_out: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, docs: list[dict]) -> Predictions:
        cases = [(d["fold"], c) for d in docs for c in d["cases"]]
        first = docs[0]
        arr = lambda key: np.array([c[key] for _, c in cases], float).reshape(len(cases), -1)
        return cls([c["id"] for _, c in cases], [str(c["patient"]) for _, c in cases],
                   np.array([f for f, _ in cases], int), list(first["objects"]), list(first["kinds"]),
                   list(first["aligned_bones"]), arr("volume_true_cm3"), arr("volume_pred_cm3"),
                   arr("mass_true_g"), arr("mass_pred_g"), [c["image"] for _, c in cases],
                   int((first.get("evaluation") or {}).get("k") or 0))

    def folds_text(self) -> str:
        """Which folds these predictions pool, and why others of the split are left out."""
        folds = sorted(set(self.folds.tolist()))
        text = f"folds {', '.join(map(str, folds))}" + (f" of {self.k}" if self.k else "")
        return text + "".join(f"; fold {f} left out: {why}" for f, why in sorted(self.left_out.items()))

    def warnings_text(self) -> str:
        """Warnings about what the scores rest on (empty when none applies): objects with
        non-finite predictions (left out of the scores), fewer than :data:`FEW_PATIENTS` patients,
        and objects whose predictions hardly vary between cases (SD of the predicted mass or
        volume below :data:`FLAT_SD_RATIO` of the truth's: a model that ignores its input)."""
        found = []
        bad = [f"{m['object']} {m['non_finite']}" for m in self.object_metrics() if m["non_finite"]]
        if bad:
            found.append("Warning: predictions not finite (NaN or infinite: a diverged model?), left out of the "
                            f"scores, cases per object: {', '.join(bad)}.")
        patients = len(set(self.patients))
        if patients < FEW_PATIENTS:
            found.append(f"Warning: {patients} held-out patient(s): correlations over so few are mostly chance "
                            f"(a PCC's 95 % interval then spans much of -1 to 1); evaluate on {FEW_PATIENTS} or more.")
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an object without finite predictions: NaN
            ratio = np.minimum(*(np.nanstd(pred, axis=0) / np.nanstd(true, axis=0)
                                 for pred, true in map(self.values, ("mass", "volume"))))
        flat = [n for n, r in zip(self.names, ratio) if r < FLAT_SD_RATIO]
        if flat:
            found.append(f"Warning: the predictions of {', '.join(flat)} hardly vary between cases (SD below "
                            f"{100 * FLAT_SD_RATIO:.0f} % of the truth's): the model barely responds to its input "
                            "(trained too briefly?); its PCC and ICC mean little.")
        return " ".join(found)

    def rows(self) -> list[list]:
        """Long format, columns :data:`ROW_HEADER`."""
        return [[cid, self.patients[m], int(self.folds[m]), n, self.kinds[i],
                 self.volume_true[m, i], self.volume_pred[m, i], self.mass_true[m, i], self.mass_pred[m, i]]
                for m, cid in enumerate(self.ids) for i, n in enumerate(self.names)]

    def values(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """Predicted and true (cases, objects) arrays of ``quantity``: ``mass`` (g), ``volume``
        (cm3) or ``density`` (mass / volume, g/cm3: for a muscle its lean mass per cm3, which fat
        infiltration lowers; not finite where the volume is 0)."""
        if quantity == "density":
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return self.mass_pred / self.volume_pred, self.mass_true / self.volume_true
        return getattr(self, f"{quantity}_pred"), getattr(self, f"{quantity}_true")

    def object_metrics(self, intervals: bool = False) -> list[dict]:
        """Per object: agreement (n, pcc, icc, mae) of each of :data:`AGREEMENT_QUANTITIES` (:meth:`values`),
        each over the cases where prediction and truth are finite, with ``intervals`` also the 95 %
        confidence interval of its PCC (pcc_low, pcc_high: :meth:`pcc_intervals`), and ``non_finite``,
        the number of cases whose predicted mass or volume is not finite."""
        values = {q: self.values(q) for q in AGREEMENT_QUANTITIES}
        found = [{"object": n, "kind": self.kinds[i],
                  "non_finite": int(np.sum(~(np.isfinite(self.mass_pred[:, i]) & np.isfinite(self.volume_pred[:, i])))),
                  **{q: metrics.agreement(pred[:, i], true[:, i]) for q, (pred, true) in values.items()}}
                 for i, n in enumerate(self.names)]
        for q in AGREEMENT_QUANTITIES if intervals else ():
            for m, (low, high) in zip(found, self.pcc_intervals(q)):
                m[q].update(pcc_low=low, pcc_high=high)
        return found

    def muscles(self) -> list[str]:
        """The muscles the muscle means average: the paper's six present in this model, or
        every muscle."""
        present = [n for n, k in zip(self.names, self.kinds) if k == "muscle"]
        return [n for n in DEFAULT_MUSCLES if n in present] or present

    def muscle_values(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`values` of the :meth:`muscles` only: (cases, muscles), in that order."""
        columns = [self.names.index(n) for n in self.muscles()]
        pred, true = self.values(quantity)
        return pred[:, columns], true[:, columns]

    def mean_muscle_pcc(self, quantity: str = "mass", cases: np.ndarray | None = None) -> float:
        """Mean PCC of ``quantity`` over :meth:`muscles` (:func:`~MSKdeXTraining.evaluation.metrics.mean_pcc`,
        on the ``cases`` at these indices, repeats allowed; default all)."""
        return metrics.mean_pcc(*self.muscle_values(quantity), cases)

    def mean_muscle_pcc_ci(self, quantity: str = "mass") -> tuple[float, float]:
        """95 % confidence interval of :meth:`mean_muscle_pcc`, BCa bootstrap over the patients
        (:func:`~MSKdeXTraining.evaluation.metrics.bootstrap_ci`)."""
        pred, true = self.muscle_values(quantity)
        return metrics.bootstrap_ci(lambda cases: metrics.mean_pcc(pred, true, cases), self.patients)

    def pcc_intervals(self, quantity: str) -> list[tuple[float, float]]:
        """Per object, the 95 % confidence interval of its PCC of ``quantity`` (:meth:`values`), BCa
        bootstrap over the patients of the cases where its prediction and truth are finite (those
        :meth:`object_metrics` scores); one bootstrap for the objects scored on the same cases."""
        pred, true = self.values(quantity)
        scored = np.isfinite(pred) & np.isfinite(true)
        shared: dict[bytes, list[int]] = {}  # scored cases -> the objects scored on them
        for i in range(len(self.names)):
            shared.setdefault(scored[:, i].tobytes(), []).append(i)
        bounds = {}
        for objects in shared.values():
            rows = scored[:, objects[0]]
            p, t = pred[rows][:, objects], true[rows][:, objects]
            low, high = metrics.bootstrap_ci(lambda cases: metrics.pccs(p[cases], t[cases]),
                                             [g for g, k in zip(self.patients, rows) if k])
            bounds.update({i: (float(a), float(b)) for i, a, b in zip(objects, low, high)})
        return [bounds[i] for i in range(len(self.names))]

    def image_metrics(self) -> list[dict]:
        """Per aligned bone and DRR type: mean PSNR (dB) and SSIM over the same ``n`` cases,
        those where both are finite (not a failed registration, nor identical images)."""
        out = []
        for bone in self.aligned_bones:
            for dtype in self.image[0][bone]:
                vals = np.array([[c[bone][dtype]["psnr"], c[bone][dtype]["ssim"]] for c in self.image], float)
                keep = np.isfinite(vals).all(axis=1)
                mean = vals[keep].mean(axis=0) if keep.any() else [float("nan")] * 2
                out.append({"bone": bone, "drr_type": dtype, "n": int(keep.sum()),
                            "psnr": float(mean[0]), "ssim": float(mean[1])})
        return out


def predict_cases(run: Path, dataset: Path, ids: list[str], fold: int = 0,
                  progress: Progress | None = None, device: str | torch.device = "cpu") -> dict:
    """Predict the cases ``ids`` of a prepared dataset with the model in ``run`` on ``device``
    (no test-time augmentation); returns the predictions document (format
    ``mskdex-predictions`` v1)."""
    from ..inference import Decomposer
    from ..modelio import load_model
    from ..training.data import PreparedDataset

    report = progress or silent
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
        volume, mass = volume_mass(pred, area, decomposer.drr_types)
        aligned = item["aligned"].numpy()
        ok = item["aligned_ok"].tolist()  # a failed registration's DRR is no reference: NaN
        image = {b: {t: {"psnr": metrics.psnr(pred[k, bone_index[j]], aligned[k, j]) if ok[j] else float("nan"),
                         "ssim": metrics.ssim(pred[k, bone_index[j]], aligned[k, j]) if ok[j] else float("nan")}
                     for k, t in enumerate(decomposer.drr_types)} for j, b in enumerate(bones)}
        cases.append({"id": cid, "patient": case_patient[cid],
                      "volume_true_cm3": item["volume_cm3"].tolist(),
                      "volume_pred_cm3": volume.tolist(),
                      "mass_true_g": item["mass_g"].tolist(),
                      "mass_pred_g": mass.tolist(),
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
    from ..training.trainer import check_run_dataset

    run, dataset = Path(run), Path(dataset)
    meta = read_meta(run)
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    ids = split.get("test_ids") or []
    if not ids:
        raise InputError(f"{run / 'model.json'}: field 'split' holds no held-out cases (test_ids): the "
                         "model was trained on every case, so nothing can calibrate its intervals; train "
                         "with --fold k/K (or run `mskdex evaluate`, whose fold models are calibrated)")
    manifest = read_manifest(dataset)
    check_dataset(meta, manifest, str(run / "model.json"))
    if not (run / "manifest.json").is_file():  # what tells the dataset trained on from another
        raise InputError(f"{run / 'manifest.json'}: missing; it is the training run's copy of its dataset's "
                         f"manifest, which shows that {dataset} is that dataset (another one may reuse its case "
                         "ids for other cases); copy it from the training run into the model folder")
    check_run_dataset(run, manifest, "calibrate it with the dataset it was trained on, whose cases its "
                                     "held-out ids name")
    return write_calibration(run, predict_cases(run, dataset, ids, fold=(split.get("fold") or [0])[0],
                                                progress=progress, device=device))


def read_predictions(path: Path) -> dict:
    """Read a predictions document, checking its format and version."""
    return read_format_json(path, PRED_FORMAT, PRED_VERSION)


def load_predictions(out: Path) -> Predictions:
    """The folds of an evaluation folder that :func:`_pool` keeps for the config, K and dataset of
    most of its ``fold_*/predictions.json`` (ties: the lowest fold), made by their model's present
    weights; ``left_out`` says why the others are not. A folder written before MSKdeX recorded
    these (no fold has them) is pooled whole."""
    out = Path(out)
    files = sorted(out.glob("fold_*/predictions.json"), key=lambda f: (len(f.parent.name), f.parent.name))
    if not files:
        raise FileNotFoundError(f"{out}: no fold_*/predictions.json; run `mskdex evaluate` first")
    docs = {f.parent.name: read_predictions(f) for f in files}
    found = {name: doc.get("evaluation") for name, doc in docs.items()
             if isinstance(doc.get("evaluation"), dict) and isinstance(doc["evaluation"].get("k"), int)
             and doc["evaluation"]["k"] >= 1}
    if not found:  # written before MSKdeX recorded what a fold was made with: all pooled, as then
        return Predictions.from_json(list(docs.values()))
    settings = [{**key, "test_ids": None} for key in found.values()]
    common = max(settings, key=lambda a: sum(not _changed(a, b) for b in settings))
    preds = _pooled(out, [{**common, "test_ids": (found.get(f"fold_{f}") or {}).get("test_ids")}
                          for f in range(common["k"])])
    preds.left_out.update({int(name.split("_")[1]): "written before MSKdeX recorded its settings"
                           for name in docs if name not in found and name.split("_")[1].isdigit()})
    return preds


def _fold_keys(dataset: Path, cfg: TrainConfig, k: int) -> tuple[dict, list[tuple[list[str], list[str]]], list[dict]]:
    """(manifest, K-fold split by patient, per fold the key of what its results depend on: config,
    K, the manifest's SHA-256, its held-out ids; as written to JSON, to compare with what was read)."""
    from ..training.data import read_manifest, split_folds

    manifest = read_manifest(dataset)
    splits = split_folds(manifest, k, seed=cfg.fold_seed)
    sha = file_sha256(dataset / "manifest.json")
    return manifest, splits, [as_written({"config": cfg.to_dict(), "k": k, "dataset": sha, "test_ids": test})
                              for _, test in splits]


def _fold_list(folds: list[int] | None, k: int) -> list[int]:
    """The folds asked for (default all ``k``), sorted; refused outside 0..k-1."""
    folds = sorted(set(range(k) if folds is None else folds))
    bad = [f for f in folds if not 0 <= f < k]
    if bad or not folds:
        raise InputError(f"folds must be in 0..{k - 1}, got {bad or 'none'}")
    return folds


def run_folds(dataset: Path, out: Path, config: str | Path = "small", overrides: dict | None = None,
              k: int = 4, folds: list[int] | None = None,
              progress: Progress | None = None) -> Predictions:
    """Train and predict the folds ``folds`` (default all ``k``) of a K-fold split by patient
    (``split_folds`` with the config's ``fold_seed``); resumable: a finished fold is kept (its
    held-out cases are predicted again if its model's weights changed since), an interrupted
    training continues from its last checkpoint. A fold folder made with another config
    (``HOW_FIELDS`` and ``RUN_CONTROL_FIELDS`` aside), K, dataset or split is refused, never
    reused. Each fold model gets its ``calibration.json``. Returns the predictions of ``folds``."""
    from ..training.config import load_config
    from ..training.checkpoint import latest_checkpoint
    from ..training.distributed import pick_device
    from ..training.trainer import check_run_dataset, train

    report = progress or silent
    cfg = load_config(config, overrides)
    dataset, out = Path(dataset), Path(out)
    manifest, splits, keys = _fold_keys(dataset, cfg, k)
    folds = _fold_list(folds, k)
    for n, f in enumerate(folds):
        target, key = out / f"fold_{f}" / "predictions.json", keys[f]
        run = out / f"fold_{f}" / "run"
        kept = _kept_predictions(target, run, key) if target.is_file() else None
        if kept is not None:
            if (run / "model.safetensors").is_file():  # calibrated again, or for the first time
                write_calibration(run, kept)
            continue
        span = 1.0 / len(folds)
        sub = part(report, n * span, span, f"fold {f}/{k}: ")
        check_run_dataset(run, manifest)
        if (run / "model.json").is_file():
            meta = read_json_object(run / "model.json", ("config", "split"))
            _check_reuse(run / "model.json", {**key, "config": meta["config"],
                                              "test_ids": meta["split"].get("test_ids")}, key)
        else:
            train(cfg, dataset, run, fold=(f, k),
                  resume=latest_checkpoint(run / "checkpoints") is not None,
                  progress=part(sub, 0.0, 0.9))
        doc = predict_cases(run, dataset, splits[f][1], fold=f, device=pick_device(cfg.device),
                            progress=part(sub, 0.9, 0.1))
        write_calibration(run, doc)
        write_json(target, {**doc, "evaluation": key})
    report(1.0, "folds done")
    return Predictions.from_json([read_predictions(out / f"fold_{f}" / "predictions.json") for f in folds])


def _kept_predictions(target: Path, run: Path, key: dict) -> dict | None:
    """A fold's predictions (``target``, made with the same ``key`` or refused) if they can be
    kept: made by the model's present weights or the model was removed since (predictions and
    key still hold). None:
    predict again (the model was trained on since, e.g. resumed with more ``epochs``, or the
    predictions predate the record of its weights); then its model.json, not the predictions'
    config, must match ``key``'s (checked by :func:`run_folds`)."""
    doc = read_predictions(target)
    if _outdated(doc, run) and set(_changed(doc.get("evaluation"), key)) <= {"config"}:
        return None
    _check_reuse(target, doc.get("evaluation"), key)
    return doc


def _outdated(doc: dict, run: Path) -> bool:
    """Whether a predictions document was made by other weights than ``run``'s present ones
    (False when the run's weights were removed)."""
    weights = run / "model.safetensors"
    return weights.is_file() and doc.get("weights_sha256") != file_sha256(weights)


def _as_recorded_schedule(wanted: dict, found: dict | None) -> dict:
    """A fold key ``wanted`` whose config leaves ``sgdr_t0`` null (made concrete when a run
    starts: its epochs) with the number its fold's record ``found`` holds, as a resumed run keeps
    it; the key as it is otherwise."""
    config = wanted.get("config") if isinstance(wanted, dict) else None
    found_config = found.get("config") if isinstance(found, dict) else None
    recorded = found_config.get("sgdr_t0") if isinstance(found_config, dict) else None
    if not isinstance(config, dict) or config.get("sgdr_t0") is not None or not isinstance(recorded, int):
        return wanted
    return {**wanted, "config": {**config, "sgdr_t0": recorded}}


def _changed(found: dict | None, wanted: dict) -> list[str]:
    """The fields of a fold's recorded key ``found`` that differ from ``wanted``, the config's
    fields that do not change what is trained aside (``HOW_FIELDS``, ``RUN_CONTROL_FIELDS``), and
    those added since ``found`` was written taken as it trained (``as_recorded_now``)."""
    from ..training.config import HOW_FIELDS, RUN_CONTROL_FIELDS, as_recorded_now

    def learnt(key: dict | None) -> dict:
        if not isinstance(key, dict):
            return {}
        if not isinstance(key.get("config"), dict):
            return key
        return {**key, "config": {k: v for k, v in as_recorded_now(key["config"]).items()
                                  if k not in RUN_CONTROL_FIELDS + HOW_FIELDS}}

    found, wanted = learnt(found), learnt(_as_recorded_schedule(wanted, found))
    return sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))


def _check_reuse(path: Path, found: dict | None, wanted: dict) -> None:
    """Refuse a fold's earlier result (``path``: its predictions.json or its model's model.json)
    made with other settings than ``wanted`` (:func:`_changed`)."""
    changed = _changed(found, wanted)
    if changed:
        fold = path.parent if path.name == "predictions.json" else path.parent.parent
        raise InputError(f"{path}: made with another {', '.join(changed)} than this evaluation; evaluate "
                         f"with the settings it was made with, or into another --out folder, or delete {fold} "
                         "to train the fold again")


def _pool(out: Path, keys: list[dict]) -> tuple[dict[int, dict], dict[int, str]]:
    """The finished folds in ``out`` whose recorded key is ``keys[f]`` (fold: predictions
    document), and why each other fold of the split is left out."""
    docs, left_out = {}, {}
    for f, key in enumerate(keys):
        target = out / f"fold_{f}" / "predictions.json"
        if not target.is_file():
            left_out[f] = "not predicted"
            continue
        doc = read_predictions(target)
        changed = _changed(doc.get("evaluation"), key)
        if changed:
            left_out[f] = f"made with another {', '.join(changed)}"
        elif _outdated(doc, out / f"fold_{f}" / "run"):
            left_out[f] = "its model was trained on since its predictions"
        else:
            docs[f] = doc
    return docs, left_out


def _pooled(out: Path, keys: list[dict]) -> Predictions:
    """The folds :func:`_pool` keeps as one :class:`Predictions`, ``left_out`` naming the others;
    InputError when it keeps none."""
    docs, left_out = _pool(out, keys)
    if not docs:
        raise InputError(f"{out}: no fold's predictions can be used ("
                         f"{'; '.join(f'fold {f}: {why}' for f, why in sorted(left_out.items()))})")
    preds = Predictions.from_json([docs[f] for f in sorted(docs)])
    preds.left_out = left_out
    return preds


def check_comparable(other: Predictions, name: str, objects: list[str], ids: set[str]) -> None:
    """Refuse (InputError naming ``name``, the other evaluation, and what differs) to compare an
    evaluation of ``objects`` on the held-out cases ``ids`` with ``other``: other objects, or
    fewer than two common cases."""
    missing, extra = [n for n in objects if n not in other.names], [n for n in other.names if n not in objects]
    if missing or extra:
        raise InputError(f"{name}: its objects differ from this evaluation's (not there: {missing}; only "
                         f"there: {extra}); compare evaluations of the same objects")
    common = len(ids & set(other.ids))
    if common < 2:
        raise InputError(f"{name}: shares {common} held-out cases with this evaluation, one-way ANOVA needs "
                         ">= 2; compare evaluations of the same dataset and split (K, fold_seed, folds)")


def anova(a: Predictions, b: Predictions, name: str = "the other evaluation") -> list[dict]:
    """Per object: one-way ANOVA of the absolute errors of two evaluations (``b`` called ``name``
    in errors, refused by :func:`check_comparable`) on their common cases where both errors of
    mass and volume are finite (``n``; F and p NaN below 2): F, p and each MAE."""
    check_comparable(b, name, a.names, set(a.ids))
    common = [i for i in a.ids if i in set(b.ids)]
    ia, ib = [a.ids.index(i) for i in common], [b.ids.index(i) for i in common]
    mean = lambda e: float(e.mean()) if e.size else float("nan")
    out = []
    for i, obj in enumerate(a.names):
        j = b.names.index(obj)
        errors = {q: (np.abs(pa[ia, i] - ta[ia, i]), np.abs(pb[ib, j] - tb[ib, j]))
                  for q, (pa, ta, pb, tb) in {"mass": (a.mass_pred, a.mass_true, b.mass_pred, b.mass_true),
                                              "volume": (a.volume_pred, a.volume_true, b.volume_pred,
                                                         b.volume_true)}.items()}
        keep = np.all([np.isfinite(e) for pair in errors.values() for e in pair], axis=0)
        row = {"object": obj, "n": int(keep.sum())}
        for q, (ea, eb) in errors.items():
            ea, eb = ea[keep], eb[keep]
            stat = metrics.anova_oneway(ea, eb) if keep.sum() >= 2 else (float("nan"),) * 2
            row[q] = dict(zip(("f", "p"), stat), mae_a=mean(ea), mae_b=mean(eb))
        out.append(row)
    return out


def mean_pcc_differences(a: Predictions, b: Predictions, name: str = "the other evaluation") -> dict[str, dict]:
    """Per quantity (lean mass, volume): the muscle-mean PCC of ``a`` minus that of ``b`` (called
    ``name`` in errors, refused by :func:`check_comparable`) on the ``n`` common cases where every
    muscle's value is finite in both (as :func:`anova`: a case one cannot score is left out of
    both), with its 95 % confidence interval (``low``, ``high``) by a paired BCa bootstrap over the
    patients (the same patients resampled for both)."""
    check_comparable(b, name, a.names, set(a.ids))
    common = [i for i in a.ids if i in set(b.ids)]
    ia, ib = [a.ids.index(i) for i in common], [b.ids.index(i) for i in common]
    out = {}
    for q in ("mass", "volume"):
        pa, ta = (v[ia] for v in a.muscle_values(q))
        pb, tb = (v[ib] for v in b.muscle_values(q))
        keep = np.isfinite(np.hstack([pa, ta, pb, tb])).all(axis=1)
        pa, ta, pb, tb = pa[keep], ta[keep], pb[keep], tb[keep]
        diff = lambda cases: metrics.mean_pcc(pa, ta, cases) - metrics.mean_pcc(pb, tb, cases)
        low, high = metrics.bootstrap_ci(diff, [a.patients[i] for i, k in zip(ia, keep) if k])
        out[q] = {"difference": diff(None) if keep.any() else float("nan"), "low": low, "high": high,
                  "n": int(keep.sum())}
    return out


def case_images(run: Path, dataset: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radiograph (H, W), predicted DRRs and reference DRRs ((3, N, H, W), physical units) of
    one case on the model grid. The reference is the CT's DRR stack, with the aligned bone
    channels replaced by the DRRs at the registered pose (what the radiograph shows); NaN for a
    bone whose registration failed (no reference, as in the scores)."""
    from ..inference import Decomposer
    from ..modelio import load_model
    from ..training.data import PreparedDataset

    model = load_model(run)
    data = PreparedDataset(dataset, [case_id], size=model.geometry.shape, cache_bytes=0)
    item = data.load(0)
    xray = item["xray"][0].numpy()
    pred = Decomposer(model).predict(xray[None])[0]
    ref = item["drr"].numpy().copy()
    ok = item["aligned_ok"].tolist()
    for j, b in enumerate(data.manifest["aligned_bones"]):
        ref[:, data.objects.index(b)] = item["aligned"][:, j].numpy() if ok[j] else np.nan
    return xray, pred, ref


def evaluate(dataset: Path, out: Path, config: str | Path = "small", overrides: dict | None = None,
             k: int = 4, folds: list[int] | None = None, compare: Path | None = None,
             title: str = "MSKdeX cross-validation",
             progress: Progress | None = None) -> Predictions:
    """Cross-validate the folds ``folds`` (see :func:`run_folds`), then write predictions.csv,
    the metric tables (CSV, Markdown), figures and report.html into ``out`` from every finished
    fold there made with this config, K and dataset (not only ``folds``); returns those pooled
    predictions. ``compare``: another evaluation folder whose absolute errors are compared per
    object by one-way ANOVA, checked before any training (same objects, shared held-out cases)."""
    from ..training.config import load_config
    from .summary import write_evaluation

    report = progress or silent
    dataset, out = Path(dataset), Path(out)
    refuse_other_kind(out, "evaluation")
    other = load_predictions(Path(compare)) if compare else None
    manifest, _, keys = _fold_keys(dataset, load_config(config, overrides), k)
    if other is not None:
        pooled = set(_fold_list(folds, k)) | set(_pool(out, keys)[0])
        check_comparable(other, f"--compare {compare}", list(manifest["objects"]),
                         {i for f in pooled for i in keys[f]["test_ids"]})
    run_folds(dataset, out, config, overrides, k, folds, progress=part(report, 0.0, 0.95))
    preds = _pooled(out, keys)
    report(0.96, f"writing the report ({preds.folds_text()})")
    write_evaluation(out, preds, dataset, title=title, compare=other,
                     compare_label=Path(compare).name if compare else "")
    report(1.0, "evaluation done")
    return preds
