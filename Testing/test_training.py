"""Training backend: config, prepared-dataset reader, real training steps, exact resume, CLI."""

import argparse
import dataclasses
import csv
import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from MSKdeXTraining.commands import train as train_cmd
from MSKdeXTraining.environment import environment
from MSKdeXTraining.errors import InputError, MSKdeXWarning
from MSKdeXTraining.modelio import read_safetensors
from MSKdeXTraining.training.config import TrainConfig, load_config, parse_overrides
from MSKdeXTraining.training.data import (PreparedDataset, aligned_ok, mirrored_order, ok_ids,
                                          read_manifest, split_folds)
from MSKdeXTraining.training.toy import write_toy_dataset
from MSKdeXTraining.training.distributed import DistInfo
from MSKdeXTraining.training.pool import ImagePool
from MSKdeXTraining.training.trainer import build_training, deterministic_kernels, normalisation, train

#: A network small enough for 32x32 tests (the "small" config's objective, unchanged).
TINY = {"image_size": 32, "batch_size": 2, "g_width": 4, "g_branches": 2, "g_blocks": 1,
        "g_stem_stride": 2, "f_width": 4, "f_down": 1, "f_blocks": 1, "d_width": 4, "d_layers": 1,
        "pool_size": 3, "checkpoint_every": 2, "augment_flip": True}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data", n_cases=6, size=32, excluded=1)


def losses_of(run):
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


class Killed(Exception):
    """A training run killed mid-epoch (raised by :func:`kill_in_epoch`)."""


def kill_in_epoch(epoch):
    """A progress callback that kills the run in ``epoch``."""
    def progress(fraction, message):
        if message.startswith(f"epoch {epoch}/"):
            raise Killed
    return progress


def weighted_terms(row, config):
    """The generator terms logged in a log.csv row with their weights (the row's lambda_is for OWIS)."""
    weights = {"gan_g": config.lambda_gan, "gan_f": config.lambda_gan, "cycle": config.lambda_cyc,
               "gc_alpha": config.lambda_gca, "gc_beta": config.lambda_gcb,
               "owis": float(row["lambda_is"]), "bone": config.lambda_bone}
    return {k: w * float(row[k]) for k, w in weights.items() if row[k] != ""}


def sgdr_lr(epoch, config):
    """Cosine annealing with warm restarts (SGDR) at the start of ``epoch`` (1-based)."""
    t, period = epoch - 1, config.sgdr_t0
    while t >= period:
        t, period = t - period, period * config.sgdr_t_mult
    return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * t / period)) / 2


def test_builtin_configs_follow_the_paper():
    paper = load_config("paper")
    assert (paper.image_size, paper.batch_size, paper.epochs) == (512, 2, 600)
    assert (paper.lr, paper.lr_min, paper.weight_decay, paper.sgdr_t0, paper.sgdr_t_mult) == \
        (1e-4, 1e-6, 1e-4, 200, 1)
    assert (paper.lambda_cyc, paper.lambda_gca, paper.lambda_l1, paper.lambda_is) == (10, 0.5, 100, 100)
    assert paper.pool_size == 50 and paper.bone_loss and paper.gan
    small = load_config("small", {"lambda_is": 0, "bone_loss": False})
    assert small.lambda_is == 0.0 and not small.bone_loss and small.sgdr_t0 is None and small.epochs == 80
    assert load_config("small", {"sgdr_t0": 7}).sgdr_t0 == 7  # null: one cycle over the run (below)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(InputError, match="unknown config keys.*'lamda_is'"):
        load_config("small", {"lamda_is": 1})
    with pytest.raises(InputError, match="'bone_loss' must be true/false"):
        load_config("small", {"bone_loss": "yes"})
    with pytest.raises(InputError, match="'lr_min' must be <= lr"):
        load_config("small", {"lr_min": 1.0})
    # values that would crash only after the dataset pass are refused up front
    for bad, message in [({"seed": -1}, "'seed' must be >= 0"), ({"beta1": 1.5}, "'beta1' must be in"),
                         ({"d_width": 0}, "'d_width' must be >= 1"), ({"g_head_width": 0}, "'g_head_width'"),
                         ({"d_layers": 5}, "at least 96 pixels for the critic")]:
        with pytest.raises(InputError, match=message):
            load_config("small", bad)
    for key in ("lr", "lambda_is", "lambda_cyc"):  # infinite weights train a NaN model to its end
        with pytest.raises(InputError, match=rf"config key '{key}' must be a finite number, got inf"):
            load_config("small", {key: math.inf})
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 3, "image_size": [32, 48]}))
    assert load_config(cfg).size == (32, 48)
    binary = tmp_path / "config.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InputError, match=r"config.png: not a text file \(not UTF-8\); expected a YAML or JSON config"):
        load_config(binary)
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_config("nonexistent")
    assert parse_overrides(["lr=1e-3", "gan=false", "image_size=[32, 40]"]) == \
        {"lr": 1e-3, "gan": False, "image_size": [32, 40]}
    with pytest.raises(InputError, match="no generator loss is on"):
        load_config("small", {"gan": False, "lambda_cyc": 0, "lambda_gca": 0, "lambda_gcb": 0, "lambda_is": 0,
                              "bone_loss": False})
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(InputError, match=r"--set 'lr=\[': the value is not YAML"):
        parse_overrides(["lr=["])
    (tmp_path / "list.yaml").write_text("- epochs: 3\n")
    with pytest.raises(InputError, match="list.yaml: expected a non-empty mapping of config keys to values, got list"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(InputError, match="empty.yaml: .* got an empty file"):
        load_config(tmp_path / "empty.yaml")


def test_manifest_validation(tmp_path, dataset):
    data = json.loads((dataset / "manifest.json").read_text())
    data["version"] = 7
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="manifest.json: field 'version' must be 2, got 7"):
        read_manifest(tmp_path)
    with pytest.raises(InputError, match="no manifest.json"):
        read_manifest(tmp_path / "missing")
    data["version"] = 2
    assert data["cases"][-1]["status"] == "excluded" and data["cases"][-1]["file"] is None  # as prepare writes
    data["cases"][0]["file"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"manifest.json: cases\[0\] \(toy_000\) field 'file' is None; expected"):
        read_manifest(tmp_path)
    data["cases"][0]["file"] = "cases/toy_000.safetensors"
    for field, value, says in [
            ("drr_types", ["vdrr", "mdrr", "wvdrr"], r"field 'drr_types' must be \['wvdrr', 'vdrr', 'mdrr'\]"),
            ("aligned_bones", ["pelvis", "tibia"], r"aligned_bones \['tibia'\] are not in 'objects'"),
            ("cases", [{k: v for k, v in c.items() if k != "patient"} for c in data["cases"]],
             r"cases\[0\] has no field 'patient'"),
            ("cases", [{k: v for k, v in c.items() if k != "geometry"} for c in data["cases"]],
             r"cases\[0\] \(toy_000\) has no field 'geometry'")]:
        (tmp_path / "manifest.json").write_text(json.dumps({**data, field: value}))
        with pytest.raises(InputError, match=rf"manifest.json: {says}"):
            read_manifest(tmp_path)


def test_split_folds_by_patient(dataset):
    manifest = read_manifest(dataset)
    folds = split_folds(manifest, 3, seed=1)
    patient = {c["id"]: c["patient"] for c in manifest["cases"]}
    all_test = sorted(i for _, test in folds for i in test)
    assert all_test == sorted(f"toy_{n:03d}" for n in range(6))  # excluded case never used
    for train_ids, test_ids in folds:
        assert not {patient[i] for i in train_ids} & {patient[i] for i in test_ids}
        assert sorted(train_ids + test_ids) == all_test
    assert split_folds(manifest, 3, seed=1) == folds
    assert len({str(split_folds(manifest, 3, seed=s)) for s in range(6)}) > 1  # patients shuffled by the seed
    with pytest.raises(InputError, match=r"number of folds must be in 2..3 \(patients\), got 4"):
        split_folds(manifest, 4)  # only 3 patients
    with pytest.raises(InputError, match=r"number of folds must be in 2..3 \(patients\), got 1"):
        split_folds(manifest, 1)
    one = {**manifest, "cases": [c for c in manifest["cases"] if c["patient"] == patient["toy_000"]]}
    with pytest.raises(InputError, match=r"the dataset has 1 patient\(s\) with cases prepared ok; "
                                         r"a split by patient needs at least 2"):
        split_folds(one, 2)


@pytest.mark.parametrize("size", [(16, 16), (20, 20), (8, 48)])
def test_dataset_resampling_keeps_volumes_and_masses(dataset, size):
    """Whole-block, non-integer and mixed up/down factors all keep the image sums."""
    ds = PreparedDataset(dataset, size=size)
    item = ds.load(2)
    sums = item["drr"].double().sum(dim=(-1, -2)) * ds.geometry.pixel_area_cm2
    np.testing.assert_allclose(sums[1], item["volume_cm3"], rtol=1e-4)
    np.testing.assert_allclose(sums[2], item["mass_g"], rtol=1e-4)
    assert item["aligned"].shape == (3, 2, *size)


def test_dataset_reads_each_case_once_within_its_memory_budget(dataset, tmp_path):
    """A case is read and resampled once; past the budget, cases are read every time."""
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    ds = PreparedDataset(copy, size=(16, 16))
    first = ds.load(0)
    first["xray"] = None  # the caller's dict, not the cache's
    case_file = ds.files[ds.ids[0]]
    saved = case_file.read_bytes()
    case_file.unlink()
    again = ds.load(0)  # from memory: the file is gone
    np.testing.assert_array_equal(again["drr"], PreparedDataset(dataset, size=(16, 16)).load(0)["drr"])
    assert again["xray"] is not None
    case_file.write_bytes(saved)

    small = PreparedDataset(copy, size=(16, 16), cache_bytes=0)
    small.load(0)
    case_file.unlink()
    with pytest.raises(InputError, match="missing"):
        small.load(0)


def test_bones_of_a_failed_registration_are_marked(dataset):
    """A case kept by `prepare --include-failed` trains the bone loss only on its good bones."""
    case = {"registration": {"pelvis": {"ok": True}, "femur_left": {"ok": True}, "femur_right": {"ok": False}}}
    assert aligned_ok(case, ["pelvis", "femur"]).tolist() == [True, False]
    assert aligned_ok({"registration": {}}, ["pelvis", "femur"]).tolist() == [True, True]  # not registered (toy)
    assert aligned_ok({"registration": {"pelvis": {"ok": True}}}, ["pelvis", "femur"]).tolist() == [True, False]
    assert PreparedDataset(dataset).load(0)["aligned_ok"].tolist() == [True, True]
    with pytest.raises(InputError, match="not 'ok'"):
        PreparedDataset(dataset, ids=["toy_x000"])
    with pytest.raises(InputError, match="no usable cases"):
        PreparedDataset(dataset, ids=[])


def test_training_steps_reduce_owis(dataset):
    """Real optimiser steps on the OWIS (+ GC) objective lower the intensity-sum error."""
    config = load_config("small", {**TINY, "gan": False, "lambda_cyc": 0, "bone_loss": False})
    ds = PreparedDataset(dataset, size=config.size)
    parts = build_training(config, len(ds.objects), ds.bone_index, DistInfo(0, 1, 0, torch.device("cpu")))
    parts.objective.norm = normalisation(ds)
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    owis = [parts.objective.step(batch, config.lambda_is)["owis"] for _ in range(30)]
    assert owis[-1] < 0.85 * owis[0], owis


def test_full_objective_writes_run_folder(dataset, tmp_path):
    # on the CPU also on a GPU machine: environment.json names the device; no zoom: over two epochs a case's
    # zoomed targets move its bone loss more than the network learns
    config = load_config("small", {**TINY, "epochs": 2, "checkpoint_every": 1, "device": "cpu", "augment_zoom": 0.0})
    messages = []
    run = train(config, dataset, tmp_path / "run", fold=(0, 3),
                progress=lambda f, m: messages.append((f, m)))
    rows = losses_of(run)
    assert len(rows) == 2
    for row in rows:  # epoch means of a sum with weights constant over the epoch
        terms = weighted_terms(row, config)
        assert set(terms) == {"gan_g", "gan_f", "cycle", "gc_alpha", "gc_beta", "owis", "bone"}
        assert all(np.isfinite(v) and v != 0 for v in terms.values()), terms
        assert float(row["lambda_is"]) == config.lambda_is
        assert float(row["g_total"]) == pytest.approx(sum(terms.values()), rel=1e-5)
        assert float(row["d_total"]) == pytest.approx(float(row["d_x"]) + float(row["d_drr"]), rel=1e-5)
    assert float(rows[-1]["bone"]) < float(rows[0]["bone"])
    assert messages[-1][0] == pytest.approx(1.0) and "epoch 2/2" in messages[-1][1]
    for name in ("model.safetensors", "model.json", "config.yaml", "manifest.json",
                 "environment.json", "checkpoints/epoch_0001.json", "checkpoints/epoch_0002.safetensors"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["split"]["fold"] == [0, 3] and len(meta["split"]["test_ids"]) == 2
    assert json.loads((run / "environment.json").read_text()) == {
        **environment(), "device": "cpu", "world_size": 1, "threads": torch.get_num_threads()}
    assert np.shape(meta["scale"]) == (3, 9) and min(min(r) for r in meta["scale"]) > 0
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, dataset, run)
    # a resume on other cases would leak the held-out fold into training: refused
    with pytest.raises(InputError, match=r"'train_ids': the run was started on other cases \(--fold 0/3\)"):
        train(config, dataset, run, fold=(1, 3), resume=True)
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["cases"][0]["seconds"] = -1.0  # prepared otherwise
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"started on another dataset \(cases differ\)"):
        train(config, other, run, fold=(0, 3), resume=True)
    # a checkpoint from before they recorded their cases: model.json tells, else no fold resume
    last = run / "checkpoints" / "epoch_0002.json"
    head = json.loads(last.read_text())
    head["state"] = {k: v for k, v in head["state"].items() if k not in ("train_ids", "fold")}
    last.write_text(json.dumps(head))
    with pytest.raises(InputError, match="'train_ids': the run was started on other cases"):
        train(config, dataset, run, fold=(1, 3), resume=True)
    (run / "model.json").unlink()
    with pytest.raises(InputError, match="no field 'train_ids' .* cannot be checked"):
        train(config, dataset, run, fold=(0, 3), resume=True)


def test_baseline_switches_off_owis_and_bone(dataset, tmp_path):
    """OWIS is logged but not in the generator total; no bone or adversarial term is computed."""
    config = load_config("small", {**TINY, "epochs": 1, "lambda_is": 0, "bone_loss": False, "gan": False})
    row = losses_of(train(config, dataset, tmp_path / "run"))[0]
    assert row["lambda_is"] == "0" and float(row["owis"]) > 0
    assert all(row[k] == "" for k in ("bone", "bone_mdrr", "gan_g", "gan_f", "d_total", "d_x", "d_drr"))
    terms = weighted_terms(row, config)
    assert terms["owis"] == 0.0 and set(terms) == {"cycle", "gc_alpha", "gc_beta", "owis"}
    assert float(row["g_total"]) == pytest.approx(sum(terms.values()), rel=1e-5)


def test_one_sgdr_cycle_follows_the_epochs_and_a_resume_keeps_it(dataset, tmp_path):
    """small's ``sgdr_t0: null``: a run of 3 epochs anneals over 3 (not small's 80) and records 3;
    resumed to 4 epochs through the same named config (only ``epochs`` changed), it keeps its
    first cycle of 3, so the learning rate restarts at epoch 4, as SGDR does."""
    overrides = {**TINY, "device": "cpu", "gan": False, "lambda_cyc": 0.0}
    config = load_config("small", {**overrides, "epochs": 3})
    assert config.sgdr_t0 is None
    run = train(config, dataset, tmp_path / "run")
    assert yaml.safe_load((run / "config.yaml").read_text())["sgdr_t0"] == 3
    concrete = TrainConfig.from_dict({**config.to_dict(), "sgdr_t0": 3})
    assert [float(r["lr"]) for r in losses_of(run)] == pytest.approx([sgdr_lr(e, concrete) for e in (1, 2, 3)])
    train(load_config("small", {**overrides, "epochs": 4}), dataset, run, resume=True)
    lrs = [float(r["lr"]) for r in losses_of(run)]
    assert lrs[3] == pytest.approx(config.lr) and lrs[2] < lrs[1] < lrs[0] == pytest.approx(config.lr)
    assert yaml.safe_load((run / "config.yaml").read_text())["sgdr_t0"] == 3


def test_resume_reproduces_uninterrupted_run(dataset, tmp_path):
    """Also: the logged learning rate follows SGDR across a restart and the resumes. On the CPU,
    where a run is bit for bit reproducible (CUDA: test_training_on_cuda_is_reproducible), with
    the zoom augmentation drawn alike."""
    config = load_config("small", {**TINY, "epochs": 4, "sgdr_t0": 2, "sgdr_t_mult": 2, "device": "cpu",
                                   "augment_zoom": 0.1})
    full = train(config, dataset, tmp_path / "full")
    with pytest.raises(Killed):
        train(config, dataset, tmp_path / "cut", progress=kill_in_epoch(4))
    assert len(losses_of(tmp_path / "cut")) == 3  # epoch 3 logged, last checkpoint at epoch 2
    with pytest.raises(InputError, match=r"cannot resume with a different config \(changed: \['lr'\]\); "
                                         r"only 'epochs', 'checkpoint_every', 'num_workers', 'device', "
                                         r"'compile', 'channels_last', 'amp_bf16' may change"):
        train(TrainConfig.from_dict({**config.to_dict(), "lr": 0.5}), dataset, tmp_path / "cut", resume=True)
    large = TrainConfig.from_dict({**config.to_dict(), "batch_size": 64})  # a resume must repeat the --set values
    with pytest.raises(InputError, match=r"cannot resume with a different config \(changed: \['batch_size'\]\)"):
        train(large, dataset, tmp_path / "cut", resume=True)
    with pytest.raises(InputError, match=r": 6 training cases, fewer than batch_size 64; set a smaller batch "
                                         r"\(--set batch_size=N, N <= 6\) or prepare more cases"):
        train(large, dataset, tmp_path / "large")
    with pytest.raises(InputError, match=r"trained 2 epochs; resume with epochs >= 2 \(now 1\)"):
        train(TrainConfig.from_dict({**config.to_dict(), "epochs": 1}), dataset, tmp_path / "cut", resume=True)
    # how it computes may change (device, layout, loader workers): the same training up to
    # rounding, and environment.json records what changed ("cpu:0": another name of the CPU, so
    # that a GPU machine's TF32 convolutions do not enter this comparison)
    shutil.copytree(tmp_path / "cut", tmp_path / "moved")
    how = {"channels_last": not config.channels_last, "device": "cpu:0", "num_workers": 1}
    moved = train(TrainConfig.from_dict({**config.to_dict(), **how}), dataset, tmp_path / "moved", resume=True)
    for row, reference in zip(losses_of(moved), losses_of(full), strict=True):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(
            {k: float(v) for k, v in reference.items()}, rel=1e-3, abs=1e-6)
    (record,) = json.loads((moved / "environment.json").read_text())["resumes"]
    assert record["after_epoch"] == 2 and record["changed"] == {
        "num_workers": [0, 1], "device": ["cpu", "cpu:0"],
        "channels_last": [config.channels_last, not config.channels_last]}
    # when to checkpoint may change, and changes nothing
    driven = TrainConfig.from_dict({**config.to_dict(), "checkpoint_every": 3})
    resumed = train(driven, dataset, tmp_path / "cut", resume=True)
    assert losses_of(resumed) == losses_of(full)
    env = json.loads((resumed / "environment.json").read_text())
    # the refused resumes stopped before training; the one that trained is recorded
    assert env["torch"] == torch.__version__ and [r["after_epoch"] for r in env["resumes"]] == [2]
    assert env["resumes"][0]["changed"] == {"checkpoint_every": [2, 3]}
    a, b = read_safetensors(full / "model.safetensors"), read_safetensors(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a resume to more epochs records them in the run's config
    longer = train(TrainConfig.from_dict({**config.to_dict(), "epochs": 5}), dataset, resumed, resume=True)
    assert "epochs: 5" in (longer / "config.yaml").read_text() and len(losses_of(longer)) == 5
    assert json.loads((longer / "environment.json").read_text())["resumes"][-1]["changed"] == {
        "epochs": [4, 5], "checkpoint_every": [3, 2]}
    lrs = [float(r["lr"]) for r in losses_of(longer)]
    assert lrs == pytest.approx([sgdr_lr(e, config) for e in range(1, 6)], rel=1e-5)
    assert lrs[2] == pytest.approx(config.lr) and lrs[1] == lrs[4] < lrs[3] < lrs[2]  # restart, longer period


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_is_reproducible(tmp_path):
    """On a GPU (deterministic kernels: training's default there) the same seed trains the same
    model, and a run killed and resumed ends where the uninterrupted one does (CUDA RNG states,
    pools and optimisers restored); no kernel warns that it has no deterministic version. The
    small config's own networks on its 64^2 grid: on an H100 without the deterministic kernels,
    two of their runs parted by 22.5 % in a weight within 3 epochs (the tests' tiny ones in one of
    two processes)."""
    dataset = write_toy_dataset(tmp_path / "data", n_cases=8, size=64)
    config = load_config("small", {"epochs": 3, "checkpoint_every": 2, "augment_flip": True, "device": "cuda"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = train(config, dataset, tmp_path / "full")
        again = train(config, dataset, tmp_path / "again")
        with pytest.raises(Killed):
            train(config, dataset, tmp_path / "cut", progress=kill_in_epoch(3))
        resumed = train(config, dataset, tmp_path / "cut", resume=True)
    assert not [str(w.message) for w in caught if "deterministic" in str(w.message)]
    reference = read_safetensors(full / "model.safetensors")
    for run in (again, resumed):
        for row, ref in zip(losses_of(run), losses_of(full), strict=True):
            assert {k: float(v) for k, v in row.items()} == pytest.approx(
                {k: float(v) for k, v in ref.items()}, rel=1e-4, abs=1e-6)
        weights = read_safetensors(run / "model.safetensors")
        for k in reference:
            torch.testing.assert_close(weights[k], reference[k], rtol=1e-4, atol=1e-5)


def deterministic_setting() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def test_deterministic_kernels_are_asked_for_on_cuda_only_and_restored_after():
    before = deterministic_setting()
    with deterministic_kernels(torch.device("cpu")):
        assert deterministic_setting() == before
    with deterministic_kernels(torch.device("cuda")):  # a flag: settable without a GPU
        assert deterministic_setting() == (True, True)
    assert deterministic_setting() == before
    torch.use_deterministic_algorithms(True)  # a caller's own setting, strict, survives an error
    try:
        with pytest.raises(Killed), deterministic_kernels(torch.device("cuda")):
            assert deterministic_setting() == (True, True)
            raise Killed
        assert deterministic_setting() == (True, False)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_training_on_cuda_asks_for_deterministic_kernels(dataset, tmp_path, monkeypatch):
    """train() runs its epochs inside deterministic_kernels on a CUDA device (the device and the
    epochs replaced here, as this machine may have no GPU)."""
    from MSKdeXTraining.training import trainer

    seen = []
    monkeypatch.setattr(trainer.distributed, "init", lambda name: DistInfo(0, 1, 0, torch.device("cuda")))
    monkeypatch.setattr(trainer, "_train", lambda *args, **kwargs: seen.append(deterministic_setting()) or tmp_path)
    before = deterministic_setting()
    assert train(load_config("small", TINY), dataset, tmp_path / "run") == tmp_path
    assert seen == [(True, True)] and deterministic_setting() == before


def test_resume_falls_back_past_a_damaged_checkpoint(dataset, tmp_path):
    """A newest checkpoint cut short is skipped with a warning naming it; the run continues
    from the one before and ends as the uninterrupted run. None readable: each is named."""
    from MSKdeXTraining.modelio import ModelFormatError

    config = load_config("small", {**TINY, "epochs": 3, "checkpoint_every": 1})
    full = train(config, dataset, tmp_path / "full")
    with pytest.raises(Killed):
        train(config, dataset, tmp_path / "cut", progress=kill_in_epoch(3))
    folder = tmp_path / "cut" / "checkpoints"
    newest = folder / "epoch_0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    shutil.copytree(tmp_path / "cut", tmp_path / "lost")
    (tmp_path / "lost" / "checkpoints" / "epoch_0001.json").write_text('{"format": "mskdex-checkpoint"')
    with pytest.raises(ModelFormatError, match=r"no checkpoint can be read \(.*epoch_0002.safetensors: not a "
                                               r"safetensors file .*epoch_0001.json: not valid JSON"):
        train(config, dataset, tmp_path / "lost", resume=True)
    with pytest.warns(MSKdeXWarning, match=r"epoch_0002.safetensors: not a safetensors file \(bad header\); "
                                         r"resuming from the older epoch_0001.json"):
        resumed = train(config, dataset, tmp_path / "cut", resume=True)
    assert losses_of(resumed) == losses_of(full)
    a, b = read_safetensors(full / "model.safetensors"), read_safetensors(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    env = json.loads((resumed / "environment.json").read_text())
    assert [r["after_epoch"] for r in env["resumes"]] == [1]


def test_a_checkpoint_of_another_world_size_is_refused(dataset, tmp_path):
    """A checkpoint written by 2 processes is not resumed by 1 (its pools and RNG states are per
    process, the batches split otherwise): refused, naming both counts; so is a config.yaml
    lacking a setting."""
    config = load_config("small", {**TINY, "epochs": 2})
    run = train(config, dataset, tmp_path / "run")
    path = run / "checkpoints" / "epoch_0002.json"
    head = json.loads(path.read_text())
    head["state"]["world_size"] = 2
    path.write_text(json.dumps(head))
    with pytest.raises(InputError, match=r"epoch_0002.json: written by 2 processes; resume with the same number \(now 1\)"):
        train(dataclasses.replace(config, epochs=3), dataset, run, resume=True)
    # a setting the run's config.yaml lacks (written by another version) is a change too
    head["state"]["world_size"] = 1
    path.write_text(json.dumps(head))
    yaml_path = run / "config.yaml"
    yaml_path.write_text("\n".join(line for line in yaml_path.read_text().splitlines() if not line.startswith("lr:")))
    with pytest.raises(InputError, match=r"cannot resume with a different config \(changed: \['lr'\]\)"):
        train(dataclasses.replace(config, epochs=3), dataset, run, resume=True)


def test_a_diverging_run_stops_before_checkpointing_nan_weights(dataset, tmp_path, monkeypatch):
    """Non-finite epoch losses stop the run with an error naming the epoch, the terms and the
    checkpoint kept (before, it trained on to the end and died in the OOD statistics)."""
    from MSKdeXTraining.errors import INPUT_ERRORS, TrainingDiverged
    from MSKdeXTraining.training.objective import Objective

    epochs = []
    monkeypatch.setattr(PreparedDataset, "set_epoch",
                        lambda self, epoch, seed, real=PreparedDataset.set_epoch: (epochs.append(epoch),
                                                                                  real(self, epoch, seed)))

    def step(self, batch, lambda_is, real=Objective.step):
        values = real(self, batch, lambda_is)
        return {**values, "owis": math.nan} if epochs[-1] == 2 else values

    monkeypatch.setattr(Objective, "step", step)
    config = load_config("small", {**TINY, "epochs": 3, "checkpoint_every": 1})
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2: the loss terms owis are NaN or "
                                               r"infinite \(log.csv\); the last checkpoint, epoch_0001.json, is kept. Train into a new folder"):
        train(config, dataset, tmp_path / "run")
    assert TrainingDiverged in INPUT_ERRORS  # one line and exit code 2 in the CLI
    assert not (tmp_path / "run" / "model.json").exists()
    assert losses_of(tmp_path / "run")[-1]["owis"] == "nan"  # the diverged epoch is logged
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch_0001.json", "epoch_0001.safetensors"]


def test_infinite_loss_terms_count_as_diverged(tmp_path):
    """inf, not only NaN, stops a run (the check is isfinite)."""
    from MSKdeXTraining.errors import TrainingDiverged
    from MSKdeXTraining.training.trainer import _check_finite

    _check_finite({"gan_g": 1.0, "owis": 0.0}, 3, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"epoch 3: the loss terms gan_g are NaN or infinite .*no checkpoint"):
        _check_finite({"gan_g": -math.inf, "owis": 0.0}, 3, tmp_path)


def test_unpaired_partners_and_flips_are_drawn_afresh_each_epoch(dataset):
    """The unpaired DRR partner of a case is a seeded permutation per epoch (the same for the same
    epoch and seed, another for the next epoch); a case's radiograph flip (stream 0) and its flip
    as someone's unpaired partner (stream 1) are independent draws."""
    ds = PreparedDataset(dataset, flip_seed=0)
    pairings = []
    for epoch in (1, 2, 3, 1):
        ds.set_epoch(epoch, 7)
        pairings.append(ds.pairing.tolist())
        assert sorted(pairings[-1]) == list(range(len(ds)))
    assert pairings[0] == pairings[3] and len({tuple(p) for p in pairings}) == 3
    flips = set()
    for epoch in range(1, 10):
        ds.set_epoch(epoch, 7)
        flips |= {(ds._flip(i, 0), ds._flip(i, 1)) for i in range(len(ds))}
    assert {(True, False), (False, True)} <= flips
    mirrored = 0  # an item's unpaired DRRs: its partner's, mirrored where the partner's stream-1 flip says so
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch, 7)
        for i in range(len(ds)):
            partner = int(ds.pairing[i])
            drr, flip = ds.load(partner)["drr"], ds._flip(partner, 1)
            assert torch.equal(ds[i]["drr_unpaired"], drr.flip(-1)[:, ds.mirrored] if flip else drr)
            mirrored += flip
    assert mirrored


def test_zoom_resampling_moves_edges_exactly_and_keeps_sums():
    """resize's zoom about the centre: a block's edges land where the magnification puts them
    (independent geometry), and the image sum goes x zoom^2 while nothing leaves the field, on
    the same grid and onto a coarser one."""
    from MSKdeXTraining.training.data import resize

    block = torch.zeros(64, 64, dtype=torch.float64)
    block[24:40, 20:44] = 1.0  # about the centre (32, 32): rows -8..8, columns -12..12
    expected = torch.zeros(64, 64, dtype=torch.float64)
    expected[22:42, 17:47] = 1.0  # x 1.25: rows -10..10, columns -15..15
    torch.testing.assert_close(resize(block, (64, 64), 1.25), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(resize(block, (32, 32), 1.25), resize(expected, (32, 32)), rtol=0, atol=1e-12)
    blob = torch.rand(3, 2, 48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blob[..., :8, :] = blob[..., -8:, :] = blob[..., :, :8] = blob[..., :, -8:] = 0.0
    for zoom, size in ((0.8, (48, 40)), (1.1, (48, 40)), (0.9, (24, 20)), (1.2, (30, 25))):
        area = (48 / size[0]) * (40 / size[1])  # output pixel area in input pixels
        torch.testing.assert_close(resize(blob, size, zoom).sum(dim=(-1, -2)) * area,
                                   blob.sum(dim=(-1, -2)) * zoom ** 2, rtol=1e-12, atol=0)
    assert resize(block, (64, 64), 1.0) is block


def test_zoom_augmentation_scales_a_case_as_a_larger_patient(dataset):
    """A zoomed case: DRR sums and targets x zoom^3 (thickness x zoom, area x zoom^2), radiograph
    and DRRs magnified alike; the zoom is drawn per epoch and case in the configured range."""
    from MSKdeXTraining.training.data import resize

    plain = PreparedDataset(dataset)
    zoomed = PreparedDataset(dataset, zoom_seed=3, max_zoom=0.1)
    seen = set()
    for epoch in (1, 2):
        zoomed.set_epoch(epoch, 7)
        for i in range(len(zoomed)):
            s = zoomed.zoom(i)
            assert 1 / 1.1 <= s <= 1.1 and s == zoomed.zoom(i)
            seen.add(round(s, 12))
            item, base = zoomed[i], plain[i]
            torch.testing.assert_close(item["xray"], resize(base["xray"], plain.size, s))
            torch.testing.assert_close(item["aligned"], resize(base["aligned"], plain.size, s) * s)
            for key in ("volume_cm3", "mass_g"):
                torch.testing.assert_close(item[key], base[key] * s ** 3)
            if s < 1:  # nothing leaves the field
                torch.testing.assert_close(item["drr"].double().sum(dim=(-1, -2)),
                                           base["drr"].double().sum(dim=(-1, -2)) * s ** 3, rtol=1e-5, atol=1e-6)
            partner = int(zoomed.pairing[i])  # the unpaired DRRs: zoomed as their case, by a draw of their own
            s_u = zoomed.zoom(partner, unpaired=True)
            assert 1 / 1.1 <= s_u <= 1.1 and s_u != zoomed.zoom(partner)
            torch.testing.assert_close(item["drr_unpaired"], resize(plain.load(partner)["drr"], plain.size, s_u) * s_u)
    assert len(seen) == 2 * len(zoomed)
    assert PreparedDataset(dataset, zoom_seed=3).zoom(0) == 1.0  # a range of 0: off


def test_a_run_recorded_before_augment_zoom_compares_as_it_trained(tmp_path):
    """A config.yaml or evaluation key written before 0.3.13 has no augment_zoom: it trained
    without zoom, so a config with 0 resumes and reuses it, and one with a zoom is refused."""
    import yaml

    from MSKdeXTraining.evaluation.crossval import _changed
    from MSKdeXTraining.training.trainer import _check_resume_config

    unzoomed = load_config("small", {"augment_zoom": 0.0})
    old = {k: v for k, v in unzoomed.to_dict().items() if k != "augment_zoom"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert _check_resume_config(tmp_path, unzoomed) == {}
    with pytest.raises(InputError, match=r"changed: \['augment_zoom'\]"):
        _check_resume_config(tmp_path, load_config("small", {"augment_zoom": 0.1}))
    assert _changed({"config": old, "k": 4}, {"config": unzoomed.to_dict(), "k": 4}) == []
    zoomed = load_config("small", {"augment_zoom": 0.1}).to_dict()
    assert _changed({"config": old, "k": 4}, {"config": zoomed, "k": 4}) == ["config"]
    with pytest.raises(InputError, match=r"'augment_zoom' must be in \[0, 0.5\]"):
        load_config("small", {"augment_zoom": -0.1})


def test_the_case_order_is_shuffled_afresh_each_epoch(dataset, tmp_path, monkeypatch):
    """The sampler is told the epoch: each epoch draws its own batches."""
    from MSKdeXTraining.training.objective import Objective

    seen = []

    def step(self, batch, lambda_is, real=Objective.step):
        seen.append(batch["index"].tolist())
        return real(self, batch, lambda_is)

    monkeypatch.setattr(Objective, "step", step)
    config = load_config("small", {**TINY, "epochs": 3, "gan": False, "bone_loss": False})
    train(config, dataset, tmp_path / "run")
    per_epoch = len(seen) // 3
    orders = [sum(seen[e * per_epoch:(e + 1) * per_epoch], []) for e in range(3)]
    assert len({tuple(o) for o in orders}) > 1, orders


def test_a_damaged_case_file_names_it_and_the_tensor(dataset, tmp_path):
    """A tensor missing, of the wrong shape or holding NaN is named, not a KeyError or a shape error later."""
    from MSKdeXTraining.modelio import write_safetensors

    copy = shutil.copytree(dataset, tmp_path / "data")
    ds = PreparedDataset(copy, ok_ids(read_manifest(copy)), (32, 32))
    path = ds.files[ds.ids[1]]
    good = read_safetensors(path)
    nan = good["drr"].clone()
    nan[1, 0, 3, 3] = math.nan
    for tensors, says in [({**good, "drr": nan}, "tensor 'drr' holds NaN or infinite values"),
                          ({k: v for k, v in good.items() if k != "mass_g"}, "missing tensor 'mass_g'"),
                          ({**good, "xray": good["xray"][:-1]},
                           r"tensor 'xray' has shape \(31, 32\), expected \(32, 32\)")]:
        write_safetensors(path, tensors)
        with pytest.raises(InputError, match=rf"{path.name}: {says}"):
            ds.load(1)


def test_a_checkpoint_that_does_not_fit_the_networks_is_named(dataset, tmp_path):
    """A checkpoint of other networks (e.g. written by another version) is a ModelFormatError
    naming it, not a traceback from load_state_dict."""
    from MSKdeXTraining.modelio import ModelFormatError
    from MSKdeXTraining.training.config import dump_config

    config = load_config("small", {**TINY, "epochs": 2, "checkpoint_every": 1})
    with pytest.raises(Killed):
        train(config, dataset, tmp_path / "run", progress=kill_in_epoch(2))
    wider = TrainConfig.from_dict({**config.to_dict(), "g_width": 8})
    (tmp_path / "run" / "config.yaml").write_text(dump_config(wider))  # as if the networks had changed
    with pytest.raises(ModelFormatError, match=r"epoch_0001.json: does not fit this version's networks "
                                               r"and training state \(written by MSKdeX \d"):
        train(wider, dataset, tmp_path / "run", resume=True)


def test_bone_loss_needs_aligned_bones(tmp_path):
    """A dataset without aligned bones is refused at the start when the bone loss is on (its
    mean over no bones is NaN), and trains with the bone loss off."""
    data = write_toy_dataset(tmp_path / "data", n_cases=2, size=32, objects=("gluteus_maximus", "iliacus"))
    assert read_manifest(data)["aligned_bones"] == []
    config = load_config("small", {**TINY, "epochs": 1})
    with pytest.raises(InputError, match=r"manifest.json: field 'aligned_bones' is empty, but the config has "
                                         r"bone_loss on.*set bone_loss=false"):
        train(config, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    row = losses_of(train(dataclasses.replace(config, bone_loss=False), data, tmp_path / "run"))[0]
    assert row["bone"] == "" and math.isfinite(float(row["g_total"]))
    from MSKdeXTraining.training.data import resize  # no bones resample to no bones on any grid
    for size in ((16, 16), (20, 20)):  # whole blocks and overlaps
        assert resize(torch.zeros(3, 0, 32, 32), size).shape == (3, 0, *size)


def test_cli_runs_in_process(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["--data", str(dataset), "--out", str(tmp_path / "run"), "--fold", "1/3",
                              "--set", *[f"{k}={json.dumps(v)}" for k, v in TINY.items()], "epochs=1",
                              "--device", "cpu"])
    assert train_cmd.run(args) == 0
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert "model written" in out and meta["split"]["fold"] == [1, 3] and meta["config"]["device"] == "cpu"
    # the held-out fold calibrated the model's intervals
    calibration = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert calibration["held_out_ids"] == meta["split"]["test_ids"] and "held-out cases" in out
    with pytest.raises(argparse.ArgumentTypeError, match="k/K"):
        train_cmd.parse_fold("3/3")


def test_channels_last_changes_only_the_rounding(dataset):
    """The NHWC layout (used on the CPU too) takes the same steps as NCHW, to float rounding."""
    runs = []
    for channels_last in (False, True):
        config = load_config("small", {**TINY, "pool_size": 0, "channels_last": channels_last})
        ds = PreparedDataset(dataset, size=config.size)
        torch.manual_seed(0)
        parts = build_training(config, len(ds.objects), ds.bone_index, DistInfo(0, 1, 0, torch.device("cpu")))
        parts.objective.norm = normalisation(ds)
        conv = next(w for w in parts.nets.G.parameters() if w.ndim == 4 and min(w.shape[1:]) > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        batch = next(iter(DataLoader(ds, batch_size=2)))
        runs.append([parts.objective.step(batch, config.lambda_is) for _ in range(3)])
    for plain, nhwc in zip(*runs):
        for k in plain:
            assert nhwc[k] == pytest.approx(plain[k], rel=1e-3, abs=1e-6), k


def test_objective_ignores_bones_of_failed_registrations(dataset):
    """Objective.step passes aligned_ok to the bone loss."""
    config = load_config("small", {**TINY, "gan": False, "lambda_cyc": 0})
    ds = PreparedDataset(dataset, size=config.size)
    parts = build_training(config, len(ds.objects), ds.bone_index, DistInfo(0, 1, 0, torch.device("cpu")))
    parts.objective.norm = normalisation(ds)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["aligned_ok"].all()
    assert parts.objective.step(batch, config.lambda_is)["bone"] != 0.0  # the loss is on here
    batch["aligned_ok"] = torch.zeros_like(batch["aligned_ok"])
    values = parts.objective.step(batch, config.lambda_is)
    assert values["bone"] == 0.0 and values["bone_mdrr"] == 0.0


def test_owis_weight_ramps_up_over_the_warmup(dataset, tmp_path):
    """Lambda_is = lambda x min(1, epoch / warmup), the weight the generator total used."""
    config = load_config("small", {**TINY, "epochs": 2, "owis_warmup_epochs": 2, "gan": False,
                                   "lambda_cyc": 0, "bone_loss": False})
    rows = losses_of(train(config, dataset, tmp_path / "run"))
    assert [float(r["lambda_is"]) for r in rows] == pytest.approx([config.lambda_is / 2, config.lambda_is])
    for row in rows:
        assert float(row["g_total"]) == pytest.approx(sum(weighted_terms(row, config).values()), rel=1e-5)


def test_flip_augmentation_flips_the_aligned_bones_too(dataset, tmp_path):
    """The aligned-bone DRRs stay registered to the flipped radiograph, and a mirrored left
    muscle is the right one: per-side channels and targets trade places."""
    sided = tmp_path / "sided"
    shutil.copytree(dataset, sided)
    manifest = json.loads((sided / "manifest.json").read_text())
    muscles = [n for n, k in zip(manifest["objects"], manifest["kinds"]) if k == "muscle"][:2]
    rename = dict(zip(muscles, ("psoas_left", "psoas_right")))
    manifest["objects"] = [rename.get(n, n) for n in manifest["objects"]]
    (sided / "manifest.json").write_text(json.dumps(manifest))
    left, right = (manifest["objects"].index(n) for n in ("psoas_left", "psoas_right"))
    swap = list(range(len(manifest["objects"])))
    swap[left], swap[right] = right, left
    assert mirrored_order(manifest["objects"]) == swap
    ds = PreparedDataset(sided, flip_seed=0)
    for epoch in range(1, 20):
        ds.set_epoch(epoch, 0)
        for i in range(len(ds)):
            item, plain = ds[i], ds.load(i)
            if torch.equal(item["xray"], plain["xray"].flip(-1)) and not torch.equal(item["xray"], plain["xray"]):
                assert torch.equal(item["drr"], plain["drr"].flip(-1)[:, swap])
                assert torch.equal(item["aligned"], plain["aligned"].flip(-1))
                assert torch.equal(item["mass_g"], plain["mass_g"][swap])
                assert torch.equal(item["volume_cm3"], plain["volume_cm3"][swap])
                assert torch.equal(item["aligned_ok"], plain["aligned_ok"])  # pelvis, femur: no sides
                return
    pytest.fail("no flipped case drawn")


def test_latest_checkpoint_is_the_highest_epoch(tmp_path):
    """Resume starts from the newest checkpoint, not the first one found."""
    from MSKdeXTraining.training.checkpoint import latest_checkpoint

    for e in (2, 10, 4):
        (tmp_path / f"epoch_{e:04d}.json").write_text("{}")
    (tmp_path / "epoch_0011.json.tmp").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "epoch_0010.json"
    for e in (9999, 10000):  # past four digits the names no longer sort as text
        (tmp_path / f"epoch_{e:04d}.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "epoch_10000.json"


def test_a_run_keeps_its_two_newest_checkpoints(dataset, tmp_path):
    """Older checkpoints are deleted, tensors with their JSON; the newest still resumes."""
    from MSKdeXTraining.training.checkpoint import prune_checkpoints, save_checkpoint

    config = load_config("small", {**TINY, "epochs": 3, "checkpoint_every": 1})
    run = train(config, dataset, tmp_path / "run")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0002.json", "epoch_0002.safetensors", "epoch_0003.json", "epoch_0003.safetensors"]
    resumed = train(dataclasses.replace(config, epochs=4), dataset, run, resume=True)
    assert len(losses_of(resumed)) == 4
    folder = tmp_path / "loose"
    for epoch in (1, 5, 3):
        save_checkpoint(folder, epoch, {"w": torch.zeros(2)})
    (folder / ".epoch_0006.safetensors.0123abcd.tmp.safetensors").write_bytes(b"0" * 64)  # a write killed midway
    assert [p.name for p in prune_checkpoints(folder, keep=1)] == ["epoch_0001.json", "epoch_0003.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0005.json", "epoch_0005.safetensors"]
    save_checkpoint(folder, 6, {"w": torch.zeros(2)})
    assert [p.name for p in prune_checkpoints(folder, keep=0)] == ["epoch_0005.json"]  # keep >= 1: the newest stays
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0006.json", "epoch_0006.safetensors"]


def test_a_checkpoint_without_its_tensors_names_them(tmp_path):
    """A tensors file that lacks a tensor its JSON names is a ModelFormatError (which resume
    falls back past), not a KeyError."""
    from MSKdeXTraining.modelio import ModelFormatError, write_safetensors
    from MSKdeXTraining.training.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2), "b": torch.ones(1)})
    assert torch.equal(load_checkpoint(path)["b"], torch.ones(1))
    write_safetensors(tmp_path / "epoch_0001.safetensors", {".w": torch.zeros(2)})  # keys: the path in the state
    with pytest.raises(ModelFormatError, match=r"epoch_0001.safetensors: lacks the tensor '.b', which "
                                               r"epoch_0001.json names"):
        load_checkpoint(path)
    head = json.loads(path.read_text())
    path.write_text(json.dumps({**head, "tensors": ["epoch_0001.safetensors"]}))
    with pytest.raises(ModelFormatError, match=r"epoch_0001.json: field 'tensors' must name a file beside it"):
        load_checkpoint(path)
    elsewhere = tmp_path / "elsewhere"
    save_checkpoint(elsewhere, 1, {"w": torch.zeros(2), "b": torch.ones(1)})
    path.write_text(json.dumps({**head, "tensors": "elsewhere/epoch_0001.safetensors"}))  # a real file, not beside it
    with pytest.raises(ModelFormatError, match=r"epoch_0001.json: field 'tensors' must name a file beside it"):
        load_checkpoint(path)


def test_the_newest_readable_checkpoint_is_loaded(tmp_path):
    """A newest checkpoint whose tensors file is gone is skipped, with a warning naming it; a
    folder without checkpoints is a FileNotFoundError."""
    from MSKdeXTraining.training.checkpoint import load_newest_checkpoint, save_checkpoint

    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_newest_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)})
    save_checkpoint(tmp_path, 2, {"w": torch.ones(2)})
    (tmp_path / "epoch_0002.safetensors").unlink()
    with pytest.warns(MSKdeXWarning, match=r"epoch_0002.safetensors.*; resuming from the older epoch_0001.json"):
        path, state = load_newest_checkpoint(tmp_path)
    assert path.name == "epoch_0001.json" and torch.equal(state["w"], torch.zeros(2))


def test_image_pool_draws_and_state():
    """Size 0 returns its input; the pool keeps the first ``size`` images and stays at that
    size; once full about half the queries return an earlier image (each at most once) that
    the new one replaces; state/load_state continues the same draws."""
    x = torch.rand(2, 3, 4, 4)
    assert ImagePool(0, 0).query(x) is x
    pool = ImagePool(3, [0, 0, 0])
    returned = []
    for k in range(0, 200, 2):
        out = pool.query(torch.arange(k, k + 2.0)[:, None, None, None].expand(2, 2, 4, 4))
        assert out.shape == (2, 2, 4, 4) and len(pool.images) == min(k + 2, 3)
        returned += [int(v) for v in out[:, 0, 0, 0]]
    assert returned[:3] == [0, 1, 2]
    old = [(k, v) for k, v in enumerate(returned) if v != k]
    assert all(v < k for k, v in old) and len({v for _, v in old}) == len(old)
    assert 0.35 < len(old) / 197 < 0.65
    state = pool.state()
    state["rng"] = json.loads(json.dumps(state["rng"]))
    copy = ImagePool(3, 1)
    copy.load_state(state, torch.device("cpu"))
    for _ in range(20):
        batch = torch.rand(2, 2, 4, 4)
        torch.testing.assert_close(copy.query(batch), pool.query(batch), rtol=0, atol=0)



def test_ood_threshold_comes_from_leave_one_out_distances():
    """Each training image's feature distance to the mean and shrunk covariance of the others
    equals a direct computation; with nearly as many features as images, a threshold from those
    distances lets fresh images of the same distribution through, one from in-sample distances
    does not."""
    from MSKdeXTraining.ood import leave_one_out_distances, shrunk

    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 8)) * np.linspace(1.0, 3.0, 8)
    direct = []
    for i in range(len(f)):
        others = np.delete(f, i, axis=0)
        e = f[i] - others.mean(0)
        direct.append(np.sqrt(e @ np.linalg.solve(shrunk(np.cov(others, rowvar=False)), e)))
    np.testing.assert_allclose(leave_one_out_distances(f), direct, rtol=1e-10)
    train_f, fresh = rng.normal(size=(60, 50)), rng.normal(size=(500, 50))
    cov = shrunk(np.cov(train_f, rowvar=False))
    d = lambda x: np.sqrt(np.einsum("bi,ij,bj->b", x - train_f.mean(0), np.linalg.inv(cov), x - train_f.mean(0)))
    flagged = lambda p99: float(np.mean(d(fresh) > 1.5 * p99))
    assert flagged(np.percentile(leave_one_out_distances(train_f), 99)) < 0.01
    assert flagged(np.percentile(d(train_f), 99)) > 0.3


def test_leave_one_out_distances_of_few_or_near_identical_images_are_finite():
    """Three images (n - 2 = 1), two (the in-sample fallback), and identical images with one
    outlier (1 - c q near zero): finite distances, never NaN."""
    from MSKdeXTraining.ood import leave_one_out_distances

    rng = np.random.default_rng(1)
    identical = np.tile(rng.normal(size=4), (8, 1))
    identical[0] += 100.0
    for f in (rng.normal(size=(3, 4)), rng.normal(size=(2, 4)), identical):
        assert np.all(np.isfinite(leave_one_out_distances(f)))


def test_config_bounds_and_types_at_their_edges(tmp_path):
    """A boolean for an int key (YAML's `epochs: yes`), a negative loss weight, AdamW's beta at 1 (its bias correction
    divides by 1 - beta^t = 0) and an image under 16 pixels, also without the critic's own limit
    (gan off), are refused naming the key; so is an empty mapping (every default: the paper's
    600 epochs at 512 pixels, unasked)."""
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(InputError, match=r"empty.json: expected a non-empty mapping of config keys to values, "
                                         r"got dict"):
        load_config(tmp_path / "empty.json")
    for bad, message in [({"epochs": True}, r"config key 'epochs' must be int, got True"),
                         ({"lambda_l1": -1.0}, r"config field 'lambda_l1' must be >= 0, got -1.0"),
                         ({"beta2": 1.0}, r"config field 'beta2' must be in \[0, 1\) \(AdamW\), got 1.0"),
                         ({"image_size": 8, "gan": False},
                          r"config field 'image_size' must be an int or \[rows, cols\], at least 16 pixels, got 8")]:
        with pytest.raises(InputError, match=message):
            load_config("small", bad)
    assert load_config("small", {"image_size": 16, "gan": False, "beta2": 0.0}).size == (16, 16)
