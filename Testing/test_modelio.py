"""Model files: safetensors + JSON only, refusal of pickles and mismatched metadata."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from MSKdeXTraining.modelio import ModelFormatError, load_model, read_safetensors
from MSKdeXTraining.training.checkpoint import join_tensors, load_checkpoint, split_tensors
from MSKdeXTraining.training.config import load_config
from MSKdeXTraining.training.data import PreparedDataset, read_manifest
from MSKdeXTraining.training.toy import write_toy_dataset
from MSKdeXTraining.training.trainer import train

TINY = {"image_size": 24, "batch_size": 2, "g_width": 4, "g_branches": 2, "g_blocks": 1,
        "g_stem_stride": 2, "f_width": 4, "f_down": 1, "f_blocks": 1, "d_width": 4, "d_layers": 1,
        "pool_size": 2, "epochs": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelio")
    data = write_toy_dataset(root / "data", n_cases=4, size=32)
    return train(load_config("small", TINY), data, root / "run"), data


def copy_run(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_predict_physical_units(run):
    path, data = run
    model = load_model(path, manifest=read_manifest(data))
    ds = PreparedDataset(data, size=model.geometry.shape)
    x = torch.stack([ds.load(i)["xray"] for i in range(2)])
    y = model.predict(x)
    assert y.shape == (2, 3, 9, 24, 24) and torch.all(y >= 0)
    expected = model.generator((x - model.meta["input"]["mean"]) / model.meta["input"]["std"])
    torch.testing.assert_close(y, expected.detach() * model.scale[None, :, :, None, None])
    assert model.geometry.pixel_spacing == pytest.approx((240 / 24, 240 / 24))  # resampled grid (mm)
    with pytest.raises(ValueError, match=r"\(B, 1, 24, 24\)"):
        model.predict(torch.zeros(1, 1, 32, 32))


def test_ood_scores_flag_foreign_images(run):
    path, data = run
    model = load_model(path)
    ds = PreparedDataset(data, size=model.geometry.shape)
    train_x = torch.stack([ds.load(i)["xray"] for i in range(len(ds))])
    noise = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    own, foreign = model.ood(train_x), model.ood(noise)
    assert own["feature_score"].max() < 1.05  # scores are relative to the training p99
    assert foreign["intensity_z"].min() > own["intensity_z"].max()
    # the features separate them too; with 4 training films the leave-one-out threshold is wide
    assert foreign["feature_score"].min() > 3 * own["feature_score"].max()
    stats = model.meta["ood"]
    # the orientation statistics recomputed with numpy: 8 x 8 block means of the 24 px films
    # (3 x 3 pixels each), their mean, and each film's Pearson r with it
    blocks = train_x.double().numpy()[:, 0].reshape(-1, 8, 3, 8, 3).mean(axis=(2, 4)).reshape(-1, 64)
    mean_layout = blocks.mean(axis=0)
    r = np.array([np.corrcoef(b, mean_layout)[0, 1] for b in blocks])
    assert stats["layout_grid"] == 8
    np.testing.assert_allclose(stats["layout_mean"], mean_layout, rtol=1e-9)
    np.testing.assert_allclose(own["layout_r"], r, rtol=1e-6)  # (ood reads layout_mean as float32)
    # the threshold's statistics: each film against the mean of the others (leave one out)
    loo = np.array([np.corrcoef(b, np.delete(blocks, i, axis=0).mean(axis=0))[0, 1] for i, b in enumerate(blocks)])
    assert stats["layout_r_min_median"] == pytest.approx([loo.min(), np.median(loo)], rel=1e-9)
    assert stats["layout_r_of"] == "leave-one-out correlations" and loo.min() < r.min()
    turned = model.ood(train_x.rot90(1, (-2, -1)))  # sideways: turning it back restores the layout
    np.testing.assert_allclose(turned["layout_turned 90 degrees clockwise"], own["layout_r"], rtol=1e-9)


def test_layout_correlation_is_pearson_r_of_block_means():
    from MSKdeXTraining.ood import layout, layout_correlation

    x = torch.rand(3, 1, 40, 24, generator=torch.Generator().manual_seed(1))
    blocks = x.double().numpy()[:, 0].reshape(3, 8, 5, 8, 3).mean(axis=(2, 4)).reshape(3, 64)
    np.testing.assert_allclose(layout(x).numpy(), blocks, rtol=1e-12)
    mean = torch.rand(64, dtype=torch.float64)
    expected = [np.corrcoef(b, mean.numpy())[0, 1] for b in blocks]
    np.testing.assert_allclose(layout_correlation(layout(x), mean).numpy(), expected, rtol=1e-9)


def test_pickle_renamed_as_safetensors_is_refused(run, tmp_path):
    path, _ = run
    dst = copy_run(path, tmp_path)
    torch.save(read_safetensors(path / "model.safetensors"), dst / "model.safetensors")  # zip pickle
    with pytest.raises(ModelFormatError, match="pickle.*never unpickles"):
        load_model(dst)
    (dst / "model.safetensors").write_bytes(pickle.dumps({"evil": 1}))  # raw pickle protocol
    with pytest.raises(ModelFormatError, match="this is a Python pickle"):  # (the tmp path holds "pickle")
        load_model(dst)
    (dst / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelFormatError, match="not a safetensors file"):
        load_model(dst)


@pytest.mark.parametrize("content, message", [("[1, 2]", "expected a JSON object, got list"),
                                               ('{"format": "mskdex-checkpoint", "version": 1}',
                                                r"missing field\(s\) \['tensors', 'state'\]")])
def test_malformed_checkpoint_is_named(tmp_path, content, message):
    (tmp_path / "epoch_0002.json").write_text(content)
    with pytest.raises(ModelFormatError, match=f"epoch_0002.json: {message}"):
        load_checkpoint(tmp_path / "epoch_0002.json")


OOD = {"feature_mean": [0.0], "feature_cov": [[1.0]], "feature_p99": 1.0, "intensity_mean": [0.5, 0.1],
       "intensity_std": [0.2, 0.1]}


@pytest.mark.parametrize("field, value, message", [
    ("code_version", "9.0.0", "written by MSKdeX 9.0.0"),
    ("format", "other", "field 'format'"),
    ("objects", 9, "field 'objects' must be a non-empty list of distinct names, got 9"),
    ("objects", [], "field 'objects' must be a non-empty list"),
    ("objects", ["femur"] * 9, "field 'objects' must be a non-empty list of distinct names"),
    ("kinds", ["muscle"], "field 'kinds' must have one of \\['muscle', 'bone'\\] per object \\(9\\)"),
    ("kinds", ["fat"] * 9, "field 'kinds' must have one of \\['muscle', 'bone'\\] per object \\(9\\), got \\['fat'"),
    ("drr_types", 3, "field 'drr_types' must be \\['wvdrr', 'vdrr', 'mdrr'\\], got 3"),
    ("scale", [[1.0]], "field 'scale' must be numbers > 0 of shape \\(3, 9\\) .*got shape \\(1, 1\\)"),
    ("scale", [[-1.0] * 9] * 3, "field 'scale' must be numbers > 0 .*got \\[\\[-1.0"),
    ("scale", [[float("nan")] * 9] * 3, "field 'scale' must be numbers > 0 .*got \\[\\[nan"),
    ("scale", [["1"] * 9] * 3, "field 'scale' must be numbers > 0"),
    ("geometry", {"rows": 24}, "field 'geometry': missing field"),
    ("input", [0.5, 0.2], "field 'input' must be a JSON object"),
    ("input.std", "1", "field 'input.std' must be a finite number > 0, got '1'"),
    ("input.std", 0.0, "field 'input.std' must be a finite number > 0, got 0.0"),
    ("input.std", True, "field 'input.std' must be a finite number > 0, got True"),
    ("input.mean", None, "field 'input.mean' must be a finite number, got None"),
    ("input.prepared_shape", [128], "field 'input.prepared_shape' must be \\[rows, cols\\] .*got shape \\(1,\\)"),
    ("input.prepared_shape", [128.0, 128], "field 'input.prepared_shape' must be \\[rows, cols\\]"),
    ("ood", {"feature_mean": [0.0]}, "field 'ood.feature_cov' must be a square matrix .*got None"),
    ("ood.feature_cov", [[1.0], [1.0, 2.0]], "field 'ood.feature_cov' must be .*got a ragged array"),
    ("ood.feature_p99", 0, "field 'ood.feature_p99' must be a finite number > 0, got 0"),
    ("ood.intensity_std", [0.2, -0.1], "field 'ood.intensity_std' must be \\[mean, std\\] with std > 0"),
    ("ood.intensity_mean", [0.5, 0.0], "field 'ood.intensity_mean' must be \\[mean, std\\] with std > 0"),
    ("ood", {**OOD, "feature_mean": [0.0] * 5, "feature_cov": [[1.0] * 5] * 5}, "'ood' has 5 feature statistics"),
    ("ood", {**OOD, "layout_grid": 8, "layout_mean": [0.0] * 63},
     "field 'ood.layout_mean' must be layout_grid\\^2 finite numbers, got shape \\(63,\\)"),
    ("ood", {**OOD, "layout_grid": 8, "layout_mean": [0.0] * 64},
     "field 'ood.layout_r_min_median' must be \\[min, median\\] of the training films' layout correlations, got None"),
])
def test_bad_metadata_is_refused(run, tmp_path, field, value, message):
    """Each field loading or prediction uses is checked; the error names the file and the field."""
    dst = copy_run(run[0], tmp_path)
    meta = json.loads((dst / "model.json").read_text())
    *parents, key = field.split(".")
    target = meta
    for parent in parents:
        target = target[parent]
    target[key] = value
    (dst / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=f"model.json.*{message}"):
        load_model(dst)


def test_dataset_mismatch_is_refused(run):
    path, data = run
    manifest = read_manifest(data)
    with pytest.raises(ModelFormatError, match="field 'objects'"):
        load_model(path, manifest={**manifest, "objects": list(reversed(manifest["objects"]))})
    geo = {**manifest["geometry"], "sdd": 1500.0}
    with pytest.raises(ModelFormatError, match="field 'geometry'"):
        load_model(path, manifest={**manifest, "geometry": geo})
    with pytest.raises(ModelFormatError, match="field 'drr_types'"):  # each field is compared
        load_model(path, manifest={**manifest, "drr_types": ["wvdrr", "vdrr"]})
    with pytest.raises(ModelFormatError, match="field 'geometry'"):  # same distances, parallel beam
        load_model(path, manifest={**manifest, "geometry": {**manifest["geometry"], "parallel": True}})


def test_weights_not_fitting_config_are_refused(run, tmp_path):
    """Weights of another width, a network with more blocks than the weights hold, weights
    lacking a tensor or holding one more: refused, never loaded with layers left as initialised;
    a model.json of another format version too."""
    from MSKdeXTraining.modelio import VERSION, write_safetensors

    dst = copy_run(run[0], tmp_path)
    original = json.loads((dst / "model.json").read_text())
    meta = json.loads(json.dumps(original))
    meta["config"]["g_width"] = 8
    (dst / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"do not fit the network described in model.json field 'config' "
                                               r"\(size mismatch for [\w.]+: .* and \d+ more\); keep the two files"):
        load_model(dst)
    meta = json.loads(json.dumps(original))
    meta["config"]["g_blocks"] += 1
    (dst / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"do not fit .*\(Missing key\(s\) in state_dict"):
        load_model(dst)
    (dst / "model.json").write_text(json.dumps(original))
    weights = read_safetensors(dst / "model.safetensors")
    for changed in ({k: v for k, v in weights.items() if k != sorted(weights)[-1]},
                    {**weights, "extra.weight": torch.zeros(2)}):
        write_safetensors(dst / "model.safetensors", changed)
        with pytest.raises(ModelFormatError, match=r"do not fit .*(Missing|Unexpected) key\(s\) in state_dict"):
            load_model(dst)
    write_safetensors(dst / "model.safetensors", weights)
    load_model(dst)  # the same tensors again: loads
    (dst / "model.json").write_text(json.dumps({**original, "version": VERSION - 1}))
    with pytest.raises(ModelFormatError, match=rf"model.json: field 'version' must be {VERSION}, got {VERSION - 1}"):
        load_model(dst)


def test_checkpoint_round_trip_without_pickle(run):
    path, _ = run
    state = load_checkpoint(path / "checkpoints" / "epoch_0001.json")
    assert set(state["nets"]) == {"G", "F", "DX", "DD"} and state["epoch"] == 1
    assert isinstance(state["optimizers"][0]["state"], dict) and 0 in state["optimizers"][0]["state"]
    nested = {"a": torch.arange(3), "b": {1: (torch.ones(2), "x")}, "c": [None, 2.5]}
    structure, tensors = split_tensors(nested)
    json.dumps(structure)
    back = join_tensors(json.loads(json.dumps(structure)), tensors)
    assert torch.equal(back["a"], nested["a"]) and back["b"][1][1] == "x" and back["c"] == [None, 2.5]


def test_model_from_a_newer_minor_version_is_refused(tmp_path):
    """A newer minor version wrote fields this one may not know: refused, not guessed."""
    from MSKdeXTraining import __version__
    from MSKdeXTraining.modelio import ModelFormatError, check_code_version

    major, minor = (int(v) for v in __version__.split(".")[:2])
    check_code_version(f"{major}.{minor}.99", "model.json")  # same minor, any patch: accepted
    check_code_version(f"{major}.0.0", "model.json")  # an older minor: accepted
    with pytest.raises(ModelFormatError, match=f"written by MSKdeX {major}.{minor + 1}.0"):
        check_code_version(f"{major}.{minor + 1}.0", "model.json")
    with pytest.raises(ModelFormatError, match=f"written by MSKdeX {major + 1}.0.0"):
        check_code_version(f"{major + 1}.0.0", "model.json")
    for unversioned in (f"{major}", "dev"):  # no minor to compare: refused, not taken as older
        with pytest.raises(ModelFormatError, match=f"written by MSKdeX {unversioned},"):
            check_code_version(unversioned, "model.json")


def test_a_model_saved_again_drops_its_old_json_before_the_weights(run, tmp_path, monkeypatch):
    """A kill while a finished run's model is saved again (a resume to more epochs) leaves no
    model.json describing other weights: the run loads nothing until the resume saves both."""
    from MSKdeXTraining import modelio

    dst = copy_run(run[0], tmp_path)
    model = load_model(dst)
    meta = {k: v for k, v in json.loads((dst / "model.json").read_text()).items()
            if k not in ("format", "version", "code_version", "drr_types", "units")}

    def killed(path, tensors):
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio, "write_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        modelio.save_model(dst, model.generator, meta)
    assert not (dst / "model.json").exists() and (dst / "model.safetensors").is_file()
    with pytest.raises(ModelFormatError, match="model.json: file not found"):
        load_model(dst)


def test_a_folder_holding_model_runs_names_them(run, tmp_path):
    """--model given an evaluation or ablation folder (not a run): the error names the runs in it."""
    evaluation = tmp_path / "evaluation"
    shutil.copytree(run[0], evaluation / "fold_0" / "run")
    with pytest.raises(ModelFormatError, match=rf"{evaluation} is not a model run folder \(the model runs in it: "
                                               rf"{evaluation / 'fold_0' / 'run'}\); run `mskdex train`"):
        load_model(evaluation)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=rf"{tmp_path / 'empty'} is not a model run folder; run"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelFormatError, match=rf"{tmp_path / 'nope'}: model run folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFormatError, match=rf"model.json: is a file; expected the model run folder .*"
                                               rf"\(e.g. {evaluation / 'fold_0' / 'run'}\)"):
        load_model(evaluation / "fold_0" / "run" / "model.json")
    (tmp_path / "hip.dcm").write_bytes(b"DICM")  # a file beside no model: no folder suggested
    with pytest.raises(ModelFormatError, match=r"hip.dcm: is a file; expected the model run folder that holds "
                                               r"model.json and model.safetensors$"):
        load_model(tmp_path / "hip.dcm")
    assert load_model(evaluation / "fold_0" / "run").meta["format"]
    ablation = tmp_path / "ablation"  # its runs lie a level deeper
    shutil.copytree(run[0], ablation / "lis100_bone1" / "fold_0" / "run")
    deeper = ablation / "lis100_bone1" / "fold_0" / "run"
    with pytest.raises(ModelFormatError, match=rf"the model runs in it: {deeper}"):
        load_model(ablation)
