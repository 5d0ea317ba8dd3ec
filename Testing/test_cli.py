"""The ``mskdex`` CLI: every subcommand is registered and bad input ends as one clear line."""

import errno
import os
import subprocess
import sys

import pytest
import SimpleITK as sitk

from MSKdeXTraining.cli import COMMANDS, build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([name, "--help"])
        assert stop.value.code == 0
        assert "usage: mskdex " + name in capsys.readouterr().out


def test_help_loads_only_what_its_command_needs():
    """``mskdex --help`` lists the commands without importing torch or scipy (it took ~3 s);
    ``mskdex drr ...`` defines the drr options alone."""
    code = ("import sys\nfrom MSKdeXTraining.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'scipy', 'SimpleITK', 'cma') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: mskdex" in out and out.strip().endswith("[]")
    parser = build_parser(only="drr")
    assert parser.parse_args(["drr", "--ct", "c", "--labels", "l", "--objects", "synthetic", "--out", "o"]).rows == 256
    with pytest.raises(SystemExit):
        parser.parse_args(["cohort", "--n", "3", "--out", "o"])  # cohort's options are not defined


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    code = main(["drr", "--ct", str(flat), "--labels", str(flat), "--objects", "synthetic", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mskdex drr: error: "), err  # no progress bar drawn above it
    assert "must be a 3D image" in err and str(flat) in err and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, says", [
    (["train", "--config", "small", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "no_such_key=1"],
     "unknown config keys ['no_such_key']"),
    (["train", "--config", "small", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "epochs=many"],
     "config key 'epochs' must be int, got 'many'"),
    (["cohort", "--n", "0", "--out", "{tmp}/c"], "--n must be >= 1, got 0"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--image-size", "0"], "--image-size must be >= 1, got 0"),
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/o",
      "--pixel-spacing", "0"], "geometry options: --pixel-spacing must be numbers > 0 (mm), got 0"),
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/afile/o"], "afile: is a file"),
    (["demo", "--n", "3", "--out", "{tmp}/d"], "--k 4 folds of --n 3 patients"),  # before any work
    (["evaluate", "--data", "{tmp}", "--out", "{tmp}/e", "--compare", "{tmp}/none"],
     "none: no fold_*/predictions.json"),
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/o", "--device", "banana"],
     "device 'banana'"),
    # prepare's --shard I/N (parsed by argparse: its usage error, exit 2) and --rows/--cols pairing
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard", "1"], "--shard must be I/N (e.g. 0/4), got '1'"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard", "a/4"], "--shard must be I/N (e.g. 0/4), got 'a/4'"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard", "0/1/2"], "--shard must be I/N"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard", "4/4"], "--shard I/N needs 0 <= I < N, got '4/4'"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard", "0/0"], "--shard I/N needs 0 <= I < N, got '0/0'"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--shard=-1/2"], "--shard I/N needs 0 <= I < N, got '-1/2'"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--rows", "64"], "--rows and --cols go together"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--cols", "64"], "--rows and --cols go together"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--rows", "0", "--cols", "64"], "--rows must be >= 1, got 0"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--rows", "64", "--cols", "0"], "--cols must be >= 1, got 0"),
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--image-size", "64", "--rows", "64"],
     "argument --rows: not allowed with argument --image-size"),
    (["prepare", "--out", "{tmp}/d"], "--cohort is required (unless --merge)"),
    # --workers of every command that spreads work over processes (argparse, before any work)
    (["prepare", "--cohort", "{tmp}", "--out", "{tmp}/d", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["cohort", "--n", "2", "--out", "{tmp}/d", "--workers", "-1"], "argument --workers: must be >= 1, got -1"),
    (["assemble", "--pairs", "{tmp}/afile", "--objects", "synthetic", "--out", "{tmp}/d", "--workers", "0"],
     "argument --workers: must be >= 1, got 0"),
    (["ablation", "--data", "{tmp}", "--out", "{tmp}/d", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["demo", "--out", "{tmp}/d", "--workers", "two"], "argument --workers: expected an integer >= 1, got 'two'"),
    # drr's geometry options: Geometry's errors come back as one line naming the options
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/o", "--pixel-spacing", "1", "2", "3"],
     "geometry options: --pixel-spacing takes one or two values (mm), got 3"),
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/o", "--sod", "1200"],
     "geometry options: need 0 < sod < sdd < inf (mm), got sod=1200.0, sdd=1100.0"),
    (["drr", "--ct", "{tmp}/ct.mha", "--labels", "{tmp}/l.mha", "--objects", "synthetic", "--out", "{tmp}/o", "--rows", "0"],
     "geometry options: detector size must be >= 1 pixel, got 0x256"),
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}/afile", "--out", "{tmp}/o", "--pixel-spacing", "1", "2", "3"],
     "--pixel-spacing takes one or two values (mm), got 3"),
    # decompose's values, checked once and by their option's name before the model is loaded
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}", "--out", "{tmp}/o", "--pixel-spacing", "0"],
     "--pixel-spacing must be numbers > 0 (mm), got 0"),
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}", "--out", "{tmp}/o", "--pixel-spacing-if-missing", "0.2", "nan"],
     "--pixel-spacing-if-missing must be numbers > 0 (mm), got 0.2 nan"),
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}", "--out", "{tmp}/o", "--magnification", "0.5"],
     "--magnification is 0.5: implausible; expected SDD / SOD in [1, 2]"),
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}", "--out", "{tmp}/o", "--seed", "-1"],
     "--seed must be >= 0, got -1"),
    # decompose's --out: a file, or under one, is refused before the model is loaded
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}/afile", "--out", "{tmp}/afile"],
     "--out {tmp}/afile: it is a file; expected a folder (new or existing) for the results"),
    (["decompose", "--model", "{tmp}", "--xray", "{tmp}", "--out", "{tmp}/afile/o"],
     "--out {tmp}/afile/o: {tmp}/afile is a file; expected a folder"),
    # demo's --dataset-px (argparse, before the cohort is generated; --n 3 would stop later)
    (["demo", "--n", "3", "--out", "{tmp}/d", "--dataset-px", "0"], "argument --dataset-px: must be >= 1, got 0"),
    # the ablation's own axes are its options, not --set; a folder that is no dataset fails before any training
    (["ablation", "--data", "{tmp}", "--out", "{tmp}/d", "--set", "lambda_is=5"],
     "--set lambda_is: the ablation trains the --lambdas values; put the value there"),
    (["ablation", "--data", "{tmp}", "--out", "{tmp}/d", "--set", "bone_loss=false"],
     "--set bone_loss: the ablation trains the --bone-loss values"),
    (["ablation", "--data", "{tmp}", "--out", "{tmp}/d"], "{tmp} is not a prepared dataset (no manifest.json)"),
    # a path that is not UTF-8 (a Latin-1 name as the shell passes it: undecodable bytes): SimpleITK would abort
    (["cohort", "--n", "1", "--out", "{tmp}/out\udce9"], "--out '{tmp}/out\\udce9': the path is not valid UTF-8"),
])
def test_invalid_values_are_reported_not_raised(tmp_path, capsys, argv, says):
    """Exit code 2 and one message naming the option (argparse's own usage errors exit 2 too)."""
    (tmp_path / "afile").write_text("not a folder")
    try:
        code = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as stop:  # an option argparse refuses while parsing
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and says.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert err.count("error:") == 1, err  # one message
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]  # refused before any work: nothing written


def test_shard_option_parses_i_of_n():
    from MSKdeXTraining.commands.prepare import _shard

    assert _shard("0/1") == (0, 1) and _shard("3/4") == (3, 4) and _shard(" 2 / 5 ") == (2, 5)
    args = build_parser(only="prepare").parse_args(["prepare", "--out", "d", "--cohort", "c"])
    assert args.shard == (0, 1) and args.rows is None and args.cols is None  # default: every case


def test_train_fold_and_pixel_spacing_options():
    """--fold k/K needs K >= 2 and 0 <= k < K; --pixel-spacing is one value or row and column."""
    import argparse

    from MSKdeXTraining.commands.train import parse_fold
    from MSKdeXTraining.radiograph_io import explicit_spacing

    assert parse_fold("0/2") == (0, 2) and parse_fold("3/4") == (3, 4)
    for text in ("0/1", "-1/4", "4/4", "a/4", "1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--fold"):
            parse_fold(text)
    assert explicit_spacing([0.2, 0.3]) == (0.2, 0.3) and explicit_spacing([0.2]) == (0.2, 0.2)
    assert explicit_spacing(None) is None


@pytest.mark.parametrize("argv, says", [
    (["--n", "4", "--k", "3"], "--k 3 folds of --n 4 patients: need 2 <= k <= n / 2"),
    (["--n", "4", "--k", "1"], "--k 1 folds of --n 4 patients"),
    (["--n", "4", "--k", "2", "--set", "no_such_key=1"], "unknown config keys ['no_such_key']"),
])
def test_demo_checks_its_options_before_generating_the_cohort(tmp_path, capsys, monkeypatch, argv, says):
    def generate_cohort(*args, **kwargs):
        raise AssertionError("the cohort was generated before the options were checked")

    monkeypatch.setattr("MSKdeXTraining.cohort.generate_cohort", generate_cohort)
    assert main(["demo", "--out", str(tmp_path / "d"), "--size", "test", *argv]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_demo_checks_the_registration_preset_before_generating_the_cohort(tmp_path, monkeypatch):
    from MSKdeXTraining.errors import InputError
    from MSKdeXTraining.evaluation.demo import run_demo

    monkeypatch.setattr("MSKdeXTraining.cohort.generate_cohort", lambda *a, **kw: pytest.fail("cohort generated"))
    with pytest.raises(InputError, match="registration preset must be one of"):
        run_demo(tmp_path / "d", n=4, k=2, size="test", registration="slow")


def test_interrupt_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("MSKdeXTraining.commands.cohort.run", interrupted)
    assert main(["cohort", "--n", "1", "--out", str(tmp_path / "c")]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only bad input becomes a one-line error: a ValueError from a bug is not disguised as one."""
    def broken(args):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr("MSKdeXTraining.commands.cohort.run", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["cohort", "--n", "1", "--out", str(tmp_path / "c")])


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_an_unwritable_output_is_one_line(monkeypatch, tmp_path, capsys, code):
    """A read-only or full disk under --out: one line naming the file, exit 2; another OS error
    (e.g. an I/O error of the disk) keeps its traceback."""
    def fails(args):
        raise OSError(code, os.strerror(code), str(tmp_path / "c" / ".cohort.json.tmp"))

    monkeypatch.setattr("MSKdeXTraining.commands.cohort.run", fails)
    assert main(["cohort", "--n", "1", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mskdex cohort: error: cannot write {tmp_path / 'c' / '.cohort.json.tmp'}: "
                          f"{os.strerror(code)}; choose an output folder") and err.count("\n") == 1

    def broken(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "x")

    monkeypatch.setattr("MSKdeXTraining.commands.cohort.run", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(["cohort", "--n", "1", "--out", str(tmp_path / "c")])


def test_decompose_refuses_a_tta_out_of_range_before_loading_the_model(tmp_path, capsys):
    """--tta outside 1..32 is one error up front, not one per file after the model is loaded."""
    assert main(["decompose", "--model", str(tmp_path / "no-model"), "--xray", str(tmp_path), "--tta", "33"]) == 2
    assert capsys.readouterr().err == "mskdex decompose: error: --tta must be in 1..32 (1 = no augmentation), got 33\n"


def test_outputs_never_overwrite_an_input(tmp_path, capsys):
    """A radiograph stored where `register` or `decompose` would write is refused, untouched."""
    out = tmp_path / "out"
    out.mkdir()
    xray = out / "qc_all.png"
    xray.write_bytes(b"a radiograph")
    code = main(["register", "--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                 "--xray", str(xray), "--objects", "synthetic", "--out", str(out), "--pixel-spacing", "0.2"])
    assert code == 2 and "would overwrite the input" in capsys.readouterr().err
    xray = xray.rename(out / "decomposition_mdrr.nii.gz")
    code = main(["decompose", "--model", str(tmp_path), "--xray", str(xray), "--out", str(out)])
    assert code == 2 and "would overwrite the input" in capsys.readouterr().err
    assert xray.read_bytes() == b"a radiograph"


def test_every_command_prints_its_help(capsys):
    """argparse %-formats help strings: a stray percent sign would crash ``--help``."""
    from MSKdeXTraining.cli import COMMANDS

    for name in ["", *COMMANDS]:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"] if name else ["--help"])
        assert done.value.code == 0 and "usage: mskdex" in capsys.readouterr().out


def test_version(capsys):
    from MSKdeXTraining import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"mskdex {__version__}\n"


def test_mskdex_warnings_are_one_line_naming_the_command(monkeypatch, capsys):
    """A warning of MSKdeX's own (an assumed source distance) prints as `mskdex CMD: warning: ...`,
    not as Python's file:line: UserWarning; other packages' warnings go to the handler before."""
    import warnings

    import numpy as np

    import MSKdeXTraining.commands.drr as drr_cmd
    from MSKdeXTraining.imaging.registration import radiograph_geometry
    from MSKdeXTraining.radiograph_io import Radiograph

    def run(args):
        radiograph_geometry(Radiograph(np.zeros((100, 100), np.float32), (1.0, 1.0), {}), "film.mha")
        warnings.warn_explicit("a library's own", UserWarning, "library.py", 7)
        return 0

    monkeypatch.setattr(drr_cmd, "run", run)
    with pytest.warns(UserWarning, match="a library's own") as passed_on:  # to the handler before
        assert main(["drr", "--ct", "c", "--labels", "l", "--objects", "synthetic", "--out", "o"]) == 0
    assert [str(w.message) for w in passed_on] == ["a library's own"]
    assert capsys.readouterr().err.splitlines() == [
        "mskdex drr: warning: film.mha: source distances not in the file or arguments; "
        "assuming SDD 1100 mm, SOD 880 mm"]


def test_a_warning_under_a_progress_bar_gets_a_line_of_its_own(monkeypatch, capsys):
    """A worker's warning, raised again while the cohort's bar is drawn, clears the bar and
    prints on its own line (Slicer reads the child's lines: a warning glued to the bar would pass
    for a progress report), then the bar is drawn again."""
    import warnings

    import MSKdeXTraining.commands.cohort as cohort_cmd
    from MSKdeXTraining.commands import progress_bar
    from MSKdeXTraining.errors import MSKdeXWarning

    def run(args):
        with progress_bar("cohort") as bar:
            bar(0.25, "case_0001: done")
            warnings.warn("case_0002: soft-tissue volume correction stopped", MSKdeXWarning)
            bar(0.5, "case_0002: done")
        return 0

    monkeypatch.setattr(cohort_cmd, "run", run)
    assert main(["cohort", "--n", "4", "--out", "o"]) == 0
    err = capsys.readouterr().err
    assert "\rmskdex cohort: warning: case_0002: soft-tissue volume correction stopped\n" in err, repr(err)
    assert err.rindex("case_0002: done") > err.index("warning:")
