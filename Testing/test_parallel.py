"""run_jobs: the same results in this process and in worker processes, failures raised."""
import contextlib
import os
import sys
import warnings

import pytest
import torch

from MSKdeXTraining.parallel import THREAD_VARIABLES, run_jobs, worker_count


def thread_settings() -> tuple[int, tuple[str | None, ...]]:
    return torch.get_num_threads(), tuple(os.environ.get(k) for k in THREAD_VARIABLES)


def pool_sizes() -> tuple[int, frozenset[int]]:
    """This process's torch threads and the sizes of its BLAS / OpenMP pools."""
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info

    return torch.get_num_threads(), frozenset(p["num_threads"] for p in threadpool_info())


@pytest.mark.parametrize("workers", [1, 2])
def test_results_and_indices(workers):
    jobs = [(2, k) for k in range(6)]
    results = dict(run_jobs(pow, jobs, workers))
    assert results == {k: 2 ** k for k in range(6)}


def test_in_process_order_and_worker_threads():
    assert [i for i, _ in run_jobs(pow, [(3, 1), (3, 2)], 1)] == [0, 1]
    assert dict(run_jobs(os.getpid, [()] * 2, 1)) == {0: os.getpid(), 1: os.getpid()}  # one worker: this process
    assert worker_count(8, 2) == 2 and worker_count(2, 8) == 2 and worker_count(None, 0) == 1  # at most one a job
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # an in-process job runs with its threads, then this process's are restored
        assert dict(run_jobs(thread_settings, [()], 1, threads=1))[0][0] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    before = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    workers = set()
    for _, settings in run_jobs(thread_settings, [()] * 2, 2, threads=3):
        workers.add(settings)
        assert {k: os.environ.get(k) for k in THREAD_VARIABLES} == before  # only the workers' set
    assert workers == {(3, ("3",) * len(THREAD_VARIABLES))}  # torch, OpenMP and BLAS pools
    assert {k: os.environ.get(k) for k in THREAD_VARIABLES} == before


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_with_the_same_pools_in_this_process_and_in_workers(workers):
    """BLAS sums in another order with another pool size (a cohort film's last bits moved), so
    a job sees ``threads``-sized pools wherever it runs; this process's are restored after."""
    before = pool_sizes()
    seen = {settings for _, settings in run_jobs(pool_sizes, [()] * 2, workers, threads=1)}
    assert seen == {(1, frozenset({1}))}
    assert pool_sizes() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_is_raised(workers):
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_jobs(int, [("1",), ("not a number",), ("3",)], workers))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_jobs_warnings_reach_this_process(workers):
    """A worker's warnings are raised again here, where the CLI prints MSKdeX's own in its form."""
    from MSKdeXTraining.errors import MSKdeXWarning

    jobs = [(f"job {k}: a damaged checkpoint skipped", MSKdeXWarning) for k in range(2)]
    with pytest.warns(MSKdeXWarning) as caught:
        assert dict(run_jobs(warnings.warn, jobs, workers)) == {0: None, 1: None}
    assert sorted(str(w.message) for w in caught) == [m for m, _ in jobs]


def warn_then_fail(message: str) -> None:
    from MSKdeXTraining.errors import MSKdeXWarning

    warnings.warn(message, MSKdeXWarning)
    raise ValueError(f"failed after: {message}")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_jobs_warnings_reach_this_process_with_its_error(workers):
    """Also those of a job still running when another failed: it is waited for."""
    from MSKdeXTraining.errors import MSKdeXWarning

    jobs = [("job 0, before its failure",), ("job 1, before its failure",)]
    with pytest.warns(MSKdeXWarning) as caught, pytest.raises(ValueError, match="failed after: job"):
        list(run_jobs(warn_then_fail, jobs, workers))
    assert {str(w.message) for w in caught} == ({m for m, in jobs} if workers == 2 else {jobs[0][0]})


def warn_here(message: str) -> None:
    warnings.warn(message, UserWarning)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_filter_naming_the_module_that_warned_applies_to_a_jobs_warnings(workers):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", "kept out", module=warn_here.__module__)
        list(run_jobs(warn_here, [("kept out",), ("shown",)], workers))
    assert [str(w.message) for w in caught] == ["shown"]


def warn_with_a_local_category(message: str) -> None:
    class LibraryWarning(RuntimeWarning):
        """Defined in a function, as some libraries do: pickle cannot name it."""

    warnings.warn(message, LibraryWarning)


def test_a_warning_whose_category_does_not_pickle_reaches_this_process_by_name():
    """A worker's warning of a category pickle cannot name comes back as its nearest built-in
    category, the message after the category's name (it failed the job before)."""
    jobs = [("odd input 0",), ("odd input 1",)]
    with pytest.warns(RuntimeWarning) as caught:
        assert dict(run_jobs(warn_with_a_local_category, jobs, 2)) == {0: None, 1: None}
    name = "warn_with_a_local_category.<locals>.LibraryWarning"
    assert sorted(str(w.message) for w in caught) == [f"{name}: odd input 0", f"{name}: odd input 1"]
    assert {w.category for w in caught} == {RuntimeWarning}


def killed_from_outside(k: int) -> int:
    """A job whose worker is killed (as the out-of-memory killer would) while it runs."""
    import signal
    import time

    if k == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return k


def test_a_worker_killed_from_outside_is_named_not_a_broken_pool_traceback():
    from MSKdeXTraining.errors import INPUT_ERRORS, WorkerLost

    with pytest.raises(WorkerLost, match=r"a worker process ended abruptly \(killed from outside: out of memory\?\) "
                                         r"while job \d of 3 ran; .* with fewer workers \(here 2\)"):
        list(run_jobs(killed_from_outside, [(0,), (1,), (2,)], 2))
    assert WorkerLost in INPUT_ERRORS  # the CLI: one line, exit 2


#: The start of a script whose run_jobs workers run report_and_wait (argv: the folder, Testing/).
WAITING_RUN = ("import signal, sys, time; sys.path.insert(0, sys.argv[2])\n"
               "from MSKdeXTraining.parallel import run_jobs\n"
               "from test_parallel import report_and_wait\n")


def _started(script: str, folder, **popen):
    """``script`` started in a process of its own, and its two workers' pids once both run a job."""
    import subprocess
    import time

    main = subprocess.Popen([sys.executable, "-c", WAITING_RUN + script, str(folder), os.path.dirname(__file__)],
                            **popen)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("worker_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.name.split("_")[1]) for p in folder.glob("worker_*")]
    if len(workers) != 2:
        main.kill()
        pytest.fail(f"the workers did not start: {workers}")
    return main, workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_process_that_started_them_is_killed(tmp_path):
    """Killed (SIGKILL: no clean-up), a run's workers would finish their jobs unseen, then wait
    for more forever; they end within seconds."""
    import time

    main, workers = _started("list(run_jobs(report_and_wait, [(sys.argv[1], k) for k in range(2)], 2))\n", tmp_path)
    try:
        main.kill()
        main.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and SIGINT as a terminal sends")
def test_ctrl_c_ends_the_workers_without_a_traceback_each(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) with two workers busy and more jobs queued: the
    run ends with the one KeyboardInterrupt of the process that started them, no worker prints
    a traceback, and none is left running."""
    import signal
    import subprocess

    main, workers = _started("signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's, not xdist's\n"
                             "try:\n"
                             "    list(run_jobs(report_and_wait, [(sys.argv[1], k) for k in range(4)], 2))\n"
                             "except KeyboardInterrupt:\n"
                             "    sys.exit(130)\n", tmp_path, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        os.killpg(main.pid, signal.SIGINT)
        _, err = main.communicate(timeout=60)
        assert main.returncode == 130, err
        assert "Traceback" not in err, err
        assert not any(_alive(pid) for pid in workers)
    finally:
        main.kill()


def report_and_wait(folder: str, k: int) -> None:
    """A job that says which process runs it, then waits long."""
    import time
    from pathlib import Path

    Path(folder, f"worker_{os.getpid()}").touch()
    time.sleep(300)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
