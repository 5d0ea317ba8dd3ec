"""Independent jobs spread over worker processes on one machine (training scales out with
torchrun instead)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import torch


def worker_count(workers: int | None, jobs: int) -> int:
    """``workers`` (default: the CPU count) limited to the number of ``jobs``, at least 1."""
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int | None = None,
             threads: int = 1) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*jobs[index]))`` as the jobs finish.

    With one worker (:func:`worker_count` of ``workers``) the jobs run in this process, in
    order, with its torch threads. Otherwise they run in spawned processes with ``threads``
    torch threads each; the first failure cancels the jobs not yet started and is raised at
    once.
    """
    workers = worker_count(workers, len(jobs))
    if workers <= 1:
        for index, job in enumerate(jobs):
            yield index, fn(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *job): index for index, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
