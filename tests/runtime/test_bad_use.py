"""Misuse gets a clear error at the call site."""
from __future__ import annotations

import pytest

import shoal


@shoal.remote
def f(x=1):
    return x


def test_calling_a_remote_function_directly(shoal_cluster):
    with pytest.raises(TypeError, match=r"f\.remote\(\)"):
        f(1)


def test_unknown_option(shoal_cluster):
    with pytest.raises(ValueError, match="invalid option.*num_cpu\\b"):
        f.options(num_cpu=1)
    with pytest.raises(ValueError, match="invalid option"):
        shoal.remote(bogus=1)(lambda: 1)


def test_negative_cpus(shoal_cluster):
    with pytest.raises(ValueError, match="num_cpus must be a non-negative number"):
        shoal.remote(num_cpus=-1)(lambda: 1)


def test_bad_num_returns_and_retries(shoal_cluster):
    with pytest.raises(ValueError, match="num_returns"):
        f.options(num_returns=-2)
    with pytest.raises(ValueError, match="max_retries"):
        f.options(max_retries="3")


def test_non_class_where_a_class_is_expected():
    from shoal.actor import ActorClass
    with pytest.raises(TypeError, match="expected a class"):
        ActorClass(lambda: 1, {})


def test_get_of_something_that_is_not_a_ref(shoal_cluster):
    with pytest.raises(TypeError, match="ObjectRef"):
        shoal.get(5)
    with pytest.raises(TypeError, match="holds a int"):
        shoal.get([f.remote(), 5])


def test_wait_argument_checks(shoal_cluster):
    r = f.remote()
    with pytest.raises(TypeError):
        shoal.wait(r)
    with pytest.raises(ValueError, match="num_returns"):
        shoal.wait([r], num_returns=2)
    with pytest.raises(ValueError, match="same ObjectRef twice"):
        shoal.wait([r, r])


def test_init_twice(shoal_cluster):
    with pytest.raises(RuntimeError, match="already"):
        shoal.init()
    shoal.init(ignore_reinit_error=True)


def test_init_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="unexpected"):
        shoal.init(num_cpu=2)
    assert not shoal.is_initialized()


def test_kill_needs_an_actor_handle(shoal_cluster):
    with pytest.raises(ValueError, match="actor handle"):
        shoal.kill(f)


def test_put_of_a_ref_is_refused(shoal_cluster):
    with pytest.raises(TypeError):
        shoal.put(f.remote())
