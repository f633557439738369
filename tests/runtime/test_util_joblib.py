"""The "shoal" joblib backend: joblib.Parallel and scikit-learn's n_jobs run
their batches in shoal worker processes, with the same results and errors
as joblib's own backends."""
from __future__ import annotations

import os
import signal

import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import shoal
from shoal.exceptions import ActorDiedError
from shoal.util.joblib import register_ray, register_shoal
from shoal.util.joblib.backend import ShoalBackend

try:
    from conftest import wait_for
except ImportError:   # pragma: no cover - depends on how pytest set sys.path
    from tests.conftest import wait_for

register_shoal()


class CustomError(Exception):
    pass


def fail_on_three(x):
    if x == 3:
        raise CustomError(f"no {x}")
    return x


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def test_parallel_results_match_a_loop_and_run_in_workers(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=2):
        squares = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(50))
        pids = joblib.Parallel(batch_size=1)(joblib.delayed(os.getpid)() for _ in range(6))
    assert squares == [i * i for i in range(50)]
    assert os.getpid() not in pids


def test_generator_output_comes_in_order(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=-1):
        results = joblib.Parallel(return_as="generator")(
            joblib.delayed(abs)(-i) for i in range(5))
        assert list(results) == [0, 1, 2, 3, 4]


def test_n_jobs_one_runs_in_the_caller_and_too_many_is_capped(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=1):
        assert joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(2)) == \
            [os.getpid()] * 2
    backend = ShoalBackend()
    assert backend.effective_n_jobs(8) == 2
    assert backend.effective_n_jobs(-1) == 2
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)


def test_an_error_raises_the_users_own_class(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=2):
        with pytest.raises(CustomError, match="no 3"):
            joblib.Parallel()(joblib.delayed(fail_on_three)(i) for i in range(6))
        # the backend is usable again after the abort
        assert joblib.Parallel()(joblib.delayed(fail_on_three)(i) for i in range(3)) == [0, 1, 2]


def test_a_killed_worker_raises_actor_died_error_not_a_hang(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=2):
        with pytest.raises(ActorDiedError):
            joblib.Parallel()(joblib.delayed(die)(i) for i in range(2))


def test_the_workers_leave_when_the_call_ends(shoal_cluster):
    with joblib.parallel_backend("shoal", n_jobs=2):
        joblib.Parallel()(joblib.delayed(abs)(i) for i in range(4))
    wait_for(lambda: shoal.available_resources().get("CPU") == 2, timeout=15,
             what="the pool's CPUs to be given back")


def test_rays_backend_name_runs_on_shoal(shoal_cluster):
    register_ray()
    with joblib.parallel_backend("ray", n_jobs=2):
        pids = joblib.Parallel(batch_size=1)(joblib.delayed(os.getpid)() for _ in range(2))
    assert os.getpid() not in pids


@pytest.mark.parametrize("n_jobs", [-1, 2])
def test_grid_search_finds_the_same_best_params_as_the_default_backend(shoal_cluster, n_jobs):
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "kernel": ["linear", "rbf"]}
    expected = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    with joblib.parallel_backend("shoal"):
        found = GridSearchCV(SVC(), grid, cv=3, n_jobs=n_jobs).fit(X, y)
    assert found.best_params_ == expected.best_params_
    assert found.best_score_ == expected.best_score_
