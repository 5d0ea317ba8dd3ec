"""Atomic writes leave either the old file or the complete new one, never a partial file."""

import json
import os
from pathlib import Path

import pytest

from MSKdeXTraining.fileio import atomic_path, create_json, refuse_overwrite, write_atomic, write_json


def test_write_json_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def _create_after(barrier, path: Path, n: int, won) -> None:
    barrier.wait()
    won[n] = create_json(path, {"writer": n})


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_create_json_lets_exactly_one_of_racing_writers_create_the_file(tmp_path):
    """Shards started together (prepare.json): one creates the record whole, the others find it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    target = tmp_path / "prepare.json"
    barrier, won = ctx.Barrier(4), ctx.Array("b", 4)
    writers = [ctx.Process(target=_create_after, args=(barrier, target, n, won)) for n in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0] * 4
    assert sum(won) == 1 and json.loads(target.read_text()) == {"writer": list(won).index(1)}
    assert not create_json(target, {"writer": 9})
    assert json.loads(target.read_text()) == {"writer": list(won).index(1)}
    assert [p.name for p in tmp_path.iterdir()] == ["prepare.json"]


def test_create_json_without_hard_links_still_creates_once(tmp_path, monkeypatch):
    """A filesystem without hard links (FAT, some network mounts): written if absent, else kept."""
    import errno

    def no_links(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(source))

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "prepare.json"
    assert create_json(target, {"writer": 1}) and not create_json(target, {"writer": 2})
    assert json.loads(target.read_text()) == {"writer": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["prepare.json"]
    monkeypatch.setattr(os, "link", lambda s, t: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        create_json(tmp_path / "other.json", {})
    assert [p.name for p in tmp_path.iterdir()] == ["prepare.json"]


def test_refuse_overwrite_detects_the_same_file(tmp_path, monkeypatch):
    """The same file however it is named: with ``..``, relative to the working folder, or through
    a link to its folder."""
    src = tmp_path / "sub" / "ct.nii.gz"
    src.parent.mkdir()
    src.write_text("ct")
    (tmp_path / "link").symlink_to(src.parent)
    monkeypatch.chdir(src.parent)
    for same in (tmp_path / "sub" / ".." / "sub" / "ct.nii.gz", Path("ct.nii.gz"), tmp_path / "link" / "ct.nii.gz"):
        with pytest.raises(FileExistsError, match="overwrite the input"):
            refuse_overwrite(same, [src])
    refuse_overwrite(tmp_path / "other.nii.gz", [src])


def test_atomic_output_gets_the_usual_permissions(tmp_path):
    target = write_json(tmp_path / "m.json", {})
    assert target.stat().st_mode & 0o644 == 0o644
    old = os.umask(0o027)
    try:  # the mode follows the process umask, also when the writer recreates the file as 0600
        def recreate(p):
            p.unlink()
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
        assert write_json(tmp_path / "u.json", {}).stat().st_mode & 0o777 == 0o640
        assert write_atomic(tmp_path / "r.bin", recreate).stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_damaged_settings_files_name_the_file_and_field(tmp_path, capsys):
    """Prepare.json cut short or emptied: one line naming the file (and the field), no traceback."""
    from MSKdeXTraining.cli import main

    settings = tmp_path / "ds" / "prepare.json"
    settings.parent.mkdir()
    for text, expected in (('{"cohort": ', "prepare.json: not valid JSON"),
                           ("[]", "prepare.json: expected a JSON object, got list"),
                           ("{}", "prepare.json: missing field(s) ['cohort', 'geometry']")):
        settings.write_text(text)
        assert main(["prepare", "--merge", "--out", str(settings.parent)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err


def test_refuse_existing_outputs_before_any_work(tmp_path):
    from MSKdeXTraining.fileio import refuse_existing

    (tmp_path / "done.json").write_text("{}")
    (tmp_path / "afile").write_text("x")
    refuse_existing([tmp_path / "new" / "a.json"], [tmp_path / "done.json"])
    with pytest.raises(FileExistsError, match="done.json: exists; choose another output folder"):
        refuse_existing([tmp_path / "done.json"])
    with pytest.raises(FileExistsError, match="afile: is a file"):
        refuse_existing([tmp_path / "afile" / "out.json"])
    with pytest.raises(FileExistsError, match="overwrite the input"):
        refuse_existing([tmp_path / "done.json"], [tmp_path / "done.json"])


def test_a_staged_set_of_files_lands_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run interrupted while writing its outputs leaves none of them (so it can run again);
    the completion mark lands last; a killed run's hidden folder goes on the next run."""
    from MSKdeXTraining.fileio import staged_folder

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, last="a.json") as stage:
            write_json(stage / "a.json", {"x": 1})
            raise KeyboardInterrupt
    assert list(out.iterdir()) == []
    killed = out / ".partial-0000-999999999"  # no such process
    killed.mkdir()
    landed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (landed.append(Path(b).name), replace(a, b)))
    with staged_folder(out, last="a.json") as stage:
        write_json(stage / "a.json", {"x": 1})
        (stage / "b.txt").write_text("b")
        (stage / "c.txt").write_text("c")
        landed.clear()  # (write_json's own rename)
    assert landed == ["b.txt", "c.txt", "a.json"]
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.txt", "c.txt"]


def test_remove_stale_keeps_live_runs_and_other_names(tmp_path):
    """Only a matching folder of a process that no longer runs is removed: a running process's
    folder (this one's pid) and names outside the pattern or without a pid suffix stay."""
    from MSKdeXTraining.fileio import remove_stale

    dead = tmp_path / ".partial-aaaa-999999999"  # no such process
    live = tmp_path / f".partial-bbbb-{os.getpid()}"
    unmatched = tmp_path / "partial-cccc-999999999"  # not hidden: outside ".partial-*"
    no_pid = tmp_path / ".partial-dddd-notapid"
    for folder in (dead, live, unmatched, no_pid):
        folder.mkdir()
        (folder / "half.json").write_text("{")
    remove_stale(tmp_path, ".partial-*")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, unmatched, no_pid))
    assert (live / "half.json").read_text() == "{"  # left whole


def test_non_finite_numbers_are_written_as_null(tmp_path):
    """Strict JSON: NaN and infinities (numpy's too) become null, never the NaN / Infinity tokens."""
    import numpy as np

    from MSKdeXTraining.fileio import as_written

    data = {"psnr": float("inf"), "pcc": [np.float64("nan"), 0.5, -np.inf], "pair": (1.0, float("nan")), "n": 3}
    text = write_json(tmp_path / "a.json", data).read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    expected = {"psnr": None, "pcc": [None, 0.5, None], "pair": [1.0, None], "n": 3}
    assert json.loads(text) == as_written(data) == expected


@pytest.mark.parametrize("command, kind, marks", [
    ("train --data {tmp}/data --out {out}", "run", ["prepare.json", "manifest.json", "cases/"]),
    ("evaluate --data {out} --out {out}", "evaluation", ["prepare.json", "manifest.json"]),
    ("ablation --data {tmp}/data --out {out}", "ablation", ["fold_0/", "predictions.csv", "report.html"]),
    ("evaluate --data {tmp}/data --out {out}", "evaluation", ["ablation.json", "lis0_bone0/", "report.html"]),
    ("cohort --n 1 --out {out}", "cohort", ["prepare.json", "cases/"]),
    ("decompose --model {tmp}/run --xray {tmp}/hip.dcm --out {out}", "decomposition", ["model.json"]),
    ("decompose --model {tmp}/run --xray {tmp}/films --out {out}", "decomposition", ["prepare.json", "cases/"]),
    ("train --data {tmp}/data --out {out}", "run", ["decomposition.csv", "decomposition.json"]),
    ("ablation --data {tmp}/data --out {out}", "ablation", ["decompositions.csv", "hip/"]),
])
def test_an_output_folder_of_another_kind_is_refused_untouched(tmp_path, capsys, command, kind, marks):
    """Each command's --out holding another command's output (its marks: fileio.OUTPUT_KINDS) is
    refused before anything is read or written, naming the mark and the command that made it."""
    from MSKdeXTraining.cli import main

    out = tmp_path / "out"
    out.mkdir()
    for mark in marks:
        (out / mark).mkdir() if mark.endswith("/") else (out / mark).write_text("{}")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(command.format(tmp=tmp_path, out=out).split()) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds " in err and f"writing this {kind} there would mix the two" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(m.rstrip("/") for m in marks)


def test_an_output_of_its_own_kind_or_empty_or_a_file(tmp_path):
    """refuse_other_kind lets a folder of its own kind (a resume) or a new/empty one through, and
    refuses a file where the folder should be."""
    from MSKdeXTraining.fileio import OUTPUT_KINDS, refuse_other_kind

    for kind, (patterns, _maker) in OUTPUT_KINDS.items():
        folder = tmp_path / kind
        folder.mkdir()
        refuse_other_kind(folder, kind)  # empty
        (folder / patterns[0].replace("*", "0")).write_text("{}")
        refuse_other_kind(folder, kind)  # its own
        refuse_other_kind(tmp_path / "new" / kind, kind)  # not there yet
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"file: is a file; expected a folder for the run"):
        refuse_other_kind(tmp_path / "file", "run")
    from MSKdeXTraining.prepare import prepare_dataset

    with pytest.raises(FileExistsError, match=r"run: holds model.json, so it is the output of mskdex train"):
        prepare_dataset(tmp_path / "cohort", tmp_path / "run")  # before the cohort is even read


def test_every_mark_of_a_kind_refuses_the_other_kinds(tmp_path):
    """Each of a kind's marks (fileio.OUTPUT_KINDS), not only its first, makes a folder that
    kind's output: a run's checkpoints/, a dataset's cases/, an evaluation's predictions.csv, an
    ablation's lis*_bone* folder each refuse every other kind's --out, and let their own through."""
    import re

    from MSKdeXTraining.fileio import OUTPUT_KINDS, marked_kind, refuse_other_kind

    for kind, (patterns, maker) in OUTPUT_KINDS.items():
        for pattern in patterns:
            name = pattern.replace("*", "1")
            assert marked_kind(name) == kind
            folder = tmp_path / f"{kind}_{name}"
            (folder / name).mkdir(parents=True)
            refuse_other_kind(folder, kind)
            for other in sorted(OUTPUT_KINDS.keys() - {kind}):
                with pytest.raises(FileExistsError, match=re.escape(f"holds {name}, so it is the output of {maker}")):
                    refuse_other_kind(folder, other)
    assert marked_kind("notes.txt") is None


def test_remove_stale_keeps_the_folder_of_a_process_that_is_not_ours(tmp_path, monkeypatch):
    """A process that exists but belongs to another user (os.kill: PermissionError; e.g. another
    user's run writing into a shared folder) is running: its working folder stays."""
    import errno

    from MSKdeXTraining.fileio import remove_stale

    kill = os.kill

    def another_users(pid, sig):
        if pid == 424242:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return kill(pid, sig)

    monkeypatch.setattr(os, "kill", another_users)
    theirs, dead = tmp_path / ".partial-aaaa-424242", tmp_path / ".partial-bbbb-999999999"  # (no such process)
    for folder in (theirs, dead):
        folder.mkdir()
    remove_stale(tmp_path, ".partial-*")
    assert [p.name for p in tmp_path.iterdir()] == [theirs.name]
