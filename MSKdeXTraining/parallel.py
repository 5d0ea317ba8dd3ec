"""Independent jobs spread over worker processes on one machine (training scales out with
torchrun instead)."""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from multiprocessing import get_context
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from .errors import Recorded, WorkerLost, recorded, warn_again


#: Environment variables that size the OpenMP / BLAS thread pools of a process as it loads
#: them (numpy's and scipy's OpenBLAS would otherwise start one thread per core in every
#: worker, and the workers would oversubscribe the cores).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_count(workers: int | None, jobs: int) -> int:
    """``workers`` (default: the CPU count) limited to the number of ``jobs``, at least 1."""
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int | None = None,
             threads: int = 1) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*jobs[index]))`` as the jobs finish.

    Each job runs with ``threads`` torch threads and OpenMP / BLAS pools of that size, so its
    result is the same bytes whatever the number of workers (BLAS sums in another order with
    another pool size). With one worker (:func:`worker_count` of ``workers``) the jobs run in
    this process, in order, its pools limited meanwhile. Otherwise they run in spawned
    processes (pools sized by :data:`THREAD_VARIABLES`, set while the workers start), and the
    warnings a job raised there are raised again here as it finishes, so this process's
    warning filters and printer see them; the first failure cancels the jobs not yet started
    and is raised once the running ones have finished (a worker killed from outside as
    :class:`~.errors.WorkerLost`). Workers end with this process, also when it is killed.
    """
    workers = worker_count(workers, len(jobs))
    if workers <= 1:
        for index, job in enumerate(jobs):
            with _thread_limits(threads):
                result = fn(*job)
            yield index, result
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(threads, os.getpid())) as pool:
        with _temporary_environ({k: str(threads) for k in THREAD_VARIABLES}):
            # the executor starts its workers within submit(): all of them before this ends
            futures = {pool.submit(_call_recording_warnings, fn, *job): index
                       for index, job in enumerate(jobs)}
        pending, registry = set(futures), {}
        try:
            for future in as_completed(futures):
                pending.discard(future)
                try:
                    outcome = _outcome(future, registry)
                except BrokenProcessPool:
                    time.sleep(0.5)  # a worker ended by Ctrl-C: this process's KeyboardInterrupt comes first
                    raise WorkerLost(f"a worker process ended abruptly (killed from outside: out of memory?) while "
                                     f"job {futures[future] + 1} of {len(jobs)} ran; finished work is kept: run the "
                                     f"same command again with fewer workers (here {workers})") from None
                yield futures[future], outcome
        except BaseException:
            pool.shutdown(cancel_futures=True)
            for future in pending:  # the jobs that were running: their warnings too
                if not future.cancelled():
                    with suppress(Exception):  # not a KeyboardInterrupt arriving meanwhile
                        _outcome(future, registry)
            raise


#: Whether this worker process runs a job now (see :func:`_interrupted`).
_running = False


def _start_worker(threads: int, parent: int) -> None:
    """In a worker as it starts: ``threads`` torch threads, Ctrl-C handled by :func:`_interrupted`
    (unless ignored, as a background job's is), and a watch that ends the worker once the process
    that started it is gone (killed: its workers would otherwise finish their jobs unseen, then
    wait for more forever)."""
    torch.set_num_threads(threads)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored as by the process that started it
        signal.signal(signal.SIGINT, _interrupted)
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C in a worker: it ends quietly, a running job first stopped by a KeyboardInterrupt
    (so its clean-up runs: no temporary file left) and not followed by the next; the process
    that started it reports the interruption once, not a traceback per worker."""
    if _running:
        raise KeyboardInterrupt
    os._exit(130)


def _end_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


#: The attribute of a failed job's exception that carries the warnings the job raised.
JOB_WARNINGS = "mskdex_job_warnings"


def _call_recording_warnings(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[Recorded]]:
    """In a worker: ``fn(*args)`` and the warnings it raised (on failure: on its exception)."""
    global _running
    _running = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            result = fn(*args)
    except KeyboardInterrupt:  # Ctrl-C (_interrupted): the job has cleaned up; no next job
        os._exit(130)
    except BaseException as error:
        setattr(error, JOB_WARNINGS, recorded(caught))
        raise
    finally:
        _running = False
    return result, recorded(caught)


def _outcome(future: Future, registry: dict) -> Any:
    """A finished job's result (or its exception, raised), its warnings raised again here first."""
    try:
        result, caught = future.result()
    except BaseException as error:
        warn_again(getattr(error, JOB_WARNINGS, ()), registry=registry)
        raise
    warn_again(caught, registry=registry)
    return result


@contextmanager
def _thread_limits(threads: int) -> Iterator[None]:
    """Limit this process's torch, OpenMP and BLAS thread pools to ``threads``, then restore them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _temporary_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by processes spawned meanwhile), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
