"""run_jobs: the same results in this process and in worker processes, failures raised."""
import pytest
import torch

from MSKdeXTraining.parallel import run_jobs


@pytest.mark.parametrize("workers", [1, 2])
def test_results_and_indices(workers):
    jobs = [(2, k) for k in range(6)]
    results = dict(run_jobs(pow, jobs, workers))
    assert results == {k: 2 ** k for k in range(6)}


def test_in_process_order_and_worker_threads():
    assert [i for i, _ in run_jobs(pow, [(3, 1), (3, 2)], 1)] == [0, 1]
    assert {n for _, n in run_jobs(torch.get_num_threads, [()] * 2, 2, threads=3)} == {3}


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_is_raised(workers):
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_jobs(int, [("1",), ("not a number",), ("3",)], workers))
