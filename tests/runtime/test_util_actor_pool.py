"""shoal.util.ActorPool, as ray.util.ActorPool users know it: ordered and
unordered results, waiting values, timeouts, membership, and the errors."""
from __future__ import annotations

import os

import pytest

import shoal
from shoal.exceptions import ActorDiedError
from shoal.util import ActorPool

try:
    from conftest import touch, wait_for_file
except ImportError:   # pragma: no cover - depends on how pytest set sys.path
    from tests.conftest import touch, wait_for_file


class Boom(ValueError):
    pass


@shoal.remote
class Doubler:
    def double(self, x):
        return 2 * x

    def double_when(self, args):
        """2 * x once ``path`` exists: a call the test finishes when it likes."""
        x, path = args
        if not wait_for_file(path, 30):
            raise RuntimeError(f"{path} never appeared")
        return 2 * x

    def fail(self, x):
        raise Boom(f"bad {x}")

    @shoal.method(num_returns=2)
    def split(self, x):
        return x, -x

    def pid(self, _):
        return os.getpid()


def double(actor, v):
    return actor.double.remote(v)


def double_when(actor, v):
    return actor.double_when.remote(v)


def test_map_returns_results_in_order_with_more_values_than_actors(shoal_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(double, range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert not pool.has_next()


def test_map_unordered_yields_a_fast_result_before_a_slow_one(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    results = pool.map_unordered(double_when, [(1, gate), (2, str(tmp_path))])
    assert next(results) == 4          # the second value's file already exists
    touch(gate)
    assert list(results) == [2]


def test_submit_and_get_next_follow_submission_order(shoal_cluster):
    pool = ActorPool([Doubler.remote()])
    for v in (3, 1, 2):
        pool.submit(double, v)
    assert pool.has_next()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [6, 2, 4]
    assert not pool.has_next()


def test_get_next_with_nothing_pending_raises_stop_iteration(shoal_cluster):
    pool = ActorPool([Doubler.remote()])
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_get_next_timeout_raises_and_keeps_the_call(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote()])
    pool.submit(double_when, (5, gate))
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    assert pool.has_next()
    touch(gate)
    assert pool.get_next(timeout=30) == 10


def test_get_next_ignore_if_timedout_gives_up_the_call(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote()])
    pool.submit(double_when, (5, gate))
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next()
    assert pool.has_free()           # the actor is back (its call still runs)
    touch(gate)
    pool.submit(double, 4)
    assert pool.get_next(timeout=30) == 8


def test_get_next_after_get_next_unordered_skipped_ahead_is_refused(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(double_when, (1, gate))
    pool.submit(double, 2)
    assert pool.get_next_unordered(timeout=30) == 4
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    touch(gate)
    assert pool.get_next_unordered(timeout=30) == 2


def test_values_wait_for_a_free_actor(shoal_cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(double, 1)
    pool.submit(double, 2)
    assert not pool.has_free()        # busy, and a value is waiting
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    assert not pool.has_free()        # the waiting value took the actor
    assert pool.get_next() == 4
    assert pool.has_free()


def test_pop_idle_and_push_move_actors_in_and_out(shoal_cluster):
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    taken = pool.pop_idle()
    assert taken == a and not pool.has_free()
    pool.push(b)
    pool.push(a)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)
    pool.submit(double, 1)            # one actor busy, the other idle
    for member in (a, b):
        with pytest.raises(ValueError, match="already belongs"):
            pool.push(member)
    assert pool.get_next() == 2


def test_push_gives_a_waiting_value_to_the_new_actor(shoal_cluster):
    pool = ActorPool([])
    pool.submit(double, 21)
    assert not pool.has_next()        # nothing runs without an actor
    pool.push(Doubler.remote())
    assert pool.get_next(timeout=30) == 42


def test_calls_with_several_returns_give_lists(shoal_cluster):
    pool = ActorPool([Doubler.remote()])
    assert list(pool.map(lambda a, v: a.split.remote(v), [1, 2])) == [[1, -1], [2, -2]]


def test_error_in_a_call_raises_its_class_and_the_actor_is_reused(shoal_cluster):
    actor = Doubler.remote()
    pool = ActorPool([actor])
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    with pytest.raises(Boom, match="bad 7"):
        pool.get_next()
    assert pool.has_free()
    assert list(pool.map(double, [1])) == [2]


def test_a_killed_actor_gives_actor_died_error_not_a_hang(shoal_cluster):
    actor = Doubler.remote()
    pool = ActorPool([actor])
    shoal.kill(actor)
    pool.submit(double, 1)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=30)


def test_map_drops_results_left_from_earlier_calls(shoal_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(double, 100)
    assert list(pool.map(double, [1, 2, 3])) == [2, 4, 6]


def test_calls_spread_over_every_actor(shoal_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.pid.remote(v), 0)
    pool.submit(lambda a, v: a.pid.remote(v), 0)
    assert len({pool.get_next(), pool.get_next()}) == 2
