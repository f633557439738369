"""`shoal doctor` (shoal.util.doctor): each diagnosis made by a program
that creates that situation, on one node. Waits poll conditions with
deadlines; held tasks wait on gate files."""
from __future__ import annotations

import pytest

import shoal
from shoal.util import doctor, state
from shoal.util.placement_group import placement_group
from tests.conftest import touch, wait_for, wait_for_file


@pytest.fixture
def infeasible_waits(monkeypatch):
    """Let impossible requests wait (as in a cluster) instead of failing at
    once; set before the cluster starts."""
    monkeypatch.setenv("SHOAL_FAIL_INFEASIBLE", "0")


@shoal.remote
def plus(x, y=0):
    return x + y


@shoal.remote
def held(gate):
    return wait_for_file(gate)


@shoal.remote(num_cpus=1)
class Nester:
    def nested_get(self):
        return shoal.get(plus.remote(1), timeout=120)


def findings(kind, **kwargs):
    return [f for f in doctor.diagnose(**kwargs) if f["kind"] == kind]


def test_nothing_stuck_says_so(shoal_cluster):
    shoal.get(plus.remote(1))
    assert doctor.diagnose() == []
    assert doctor.report().startswith("Nothing looks stuck")


def test_a_task_no_node_can_run_and_the_tasks_waiting_for_it(infeasible_waits,
                                                              shoal_cluster):
    big = plus.options(num_gpus=1, resources={"tpu": 4}).remote(1)
    middle = plus.remote(big)
    last = plus.remote(middle)
    (f,) = wait_for(lambda: findings("infeasible"), timeout=30, what="the infeasible finding")
    assert f["task_id"] == big.hex()[:24]
    assert "GPU: 1" in f["message"] and "tpu: 4" in f["message"]
    assert "the most GPU on one node is 0" in f["message"]
    chains = {w["task_id"]: w for w in findings("waiting_on_pending")}
    assert chains[middle.hex()[:24]]["chain"] == [big.hex()[:24]]
    assert chains[last.hex()[:24]]["chain"] == [middle.hex()[:24], big.hex()[:24]]
    assert "infeasible" in chains[last.hex()[:24]]["message"]
    text = doctor.report()
    assert "[infeasible]" in text and "[waiting_on_pending]" in text
    shoal.cancel(big)


@pytest.mark.cluster(num_cpus=2)
def test_actors_blocked_in_get_holding_every_cpu(shoal_cluster):
    """Two 1-CPU actors each wait in get for a 1-CPU task: nothing can run."""
    actors = [Nester.remote() for _ in range(2)]
    calls = [a.nested_get.remote() for a in actors]
    def both():
        found = findings("resource_deadlock")
        return len(found) == 2 and all(f["name"] == "plus" for f in found) and found
    f = wait_for(both, timeout=30, what="both nested tasks found deadlocked")[0]
    assert "CPU: 1" in f["message"] and "blocked in get" in f["message"]
    assert len(f["holders"]) == 2 and all(h.startswith("actor Nester") for h in f["holders"])
    for a in actors:
        shoal.kill(a)
    for c in calls:
        with pytest.raises(shoal.exceptions.ActorDiedError):
            shoal.get(c, timeout=30)


@pytest.mark.cluster(num_cpus=2)
def test_a_placement_group_waiting_for_resources(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    busy = held.remote(gate)
    wait_for(lambda: state.list_tasks(filters=[("state", "=", "RUNNING")]),
             timeout=30, what="the held task to run")
    pg = placement_group([{"CPU": 2}], name="wide")
    (f,) = wait_for(lambda: findings("placement_group"), timeout=30,
                    what="the pending group")
    assert "wide" in f["message"] and "CPU: 2" in f["message"]
    touch(gate)
    assert shoal.get(busy, timeout=30)
    shoal.get(pg.ready(), timeout=30)
    assert findings("placement_group") == []


def test_a_task_running_far_longer_than_usual(shoal_cluster, tmp_path):
    done = str(tmp_path / "done")
    touch(done)
    shoal.get([held.remote(done) for _ in range(3)])
    gate = str(tmp_path / "gate")
    slow = held.remote(gate)
    (f,) = wait_for(lambda: findings("straggler", straggler_min_s=0.5),
                    timeout=30, interval=0.1, what="the straggler")
    assert f["task_id"] == slow.hex()[:24]
    assert f["running_s"] >= 0.5 and f["running_s"] >= 5 * f["usual_s"]
    assert "usually takes" in f["message"] and "median of 3 runs" in f["message"]
    assert findings("straggler") == []          # default: 10 s before it counts
    touch(gate)
    assert shoal.get(slow, timeout=30)


def test_a_task_stuck_behind_its_second_argument(infeasible_waits, shoal_cluster, tmp_path):
    """The first argument's producer runs; the second's can never run."""
    gate = str(tmp_path / "gate")
    running = held.remote(gate)
    wait_for(lambda: state.list_tasks(filters=[("state", "=", "RUNNING")]),
             timeout=30, what="the held task to run")
    never = plus.options(resources={"tpu": 1}).remote(1)
    both = plus.remote(running, never)
    chains = wait_for(lambda: {w["task_id"]: w for w in findings("waiting_on_pending")},
                      timeout=30, what="the waiting_on_pending finding")
    assert chains[both.hex()[:24]]["chain"] == [never.hex()[:24]]
    assert "infeasible" in chains[both.hex()[:24]]["message"]
    touch(gate)
    assert shoal.get(running, timeout=30)
    shoal.cancel(never)


@shoal.remote(num_gpus=4)
class Big:
    def ping(self):
        return 1


def test_an_actor_no_node_can_host_is_named_as_an_actor(infeasible_waits, shoal_cluster):
    big = Big.remote()
    (f,) = wait_for(lambda: findings("infeasible"), timeout=30, what="the infeasible actor")
    assert f["message"].startswith(f"actor Big ({big._actor_id.hex()})")
    assert "GPU: 4" in f["message"] and "the most GPU on one node is 0" in f["message"]
    shoal.kill(big)


@shoal.remote(num_cpus=1)
class Helper:
    def ping(self):
        return 1


@shoal.remote(num_cpus=1)
class Caller:
    def call_a_new_helper(self):
        self.helper = Helper.remote()         # needs a CPU that the callers hold
        return shoal.get(self.helper.ping.remote(), timeout=120)


@pytest.mark.cluster(num_cpus=2)
def test_an_actor_that_cannot_start_because_its_callers_hold_every_cpu(shoal_cluster):
    callers = [Caller.remote() for _ in range(2)]
    calls = [c.call_a_new_helper.remote() for c in callers]

    def both():
        found = findings("resource_deadlock")
        return len(found) == 2 and found
    found = wait_for(both, timeout=30, what="both helpers found deadlocked")
    for f in found:
        assert f["message"].startswith("actor Helper (")
        assert "blocked in get" in f["message"] and "wait for its result" in f["message"]
        assert sorted(h.split(" (")[0] for h in f["holders"]) == ["actor Caller"] * 2
    for c in callers:
        shoal.kill(c)
    for c in calls:
        with pytest.raises(shoal.exceptions.ActorDiedError):
            shoal.get(c, timeout=30)


@shoal.remote(num_cpus=0)
class Gatekeeper:
    def wait(self, gate):
        return wait_for_file(gate)


@shoal.remote(num_cpus=1)
class Waiter:
    def wait_on(self, keeper, gate):
        return shoal.get(keeper.wait.remote(gate), timeout=120)


@pytest.mark.cluster(num_cpus=2)
def test_callers_blocked_on_other_work_are_not_called_a_deadlock(shoal_cluster, tmp_path):
    """Every CPU is held by actors blocked in get, and a task waits for a CPU,
    but what they wait for runs without one: not a deadlock (the task runs
    once the actors are gone)."""
    gate = str(tmp_path / "gate")
    keeper = Gatekeeper.remote()
    waiters = [Waiter.remote() for _ in range(2)]
    calls = [w.wait_on.remote(keeper, gate) for w in waiters]
    later = plus.remote(1)

    def all_in_place():
        rows = state.list_tasks(limit=None, detail=True)
        blocked = [r for r in rows if r["name"].endswith("wait_on") and r["blocked_in_get"]]
        waiting = [r for r in rows if r["task_id"] == later.hex()[:24]
                   and r["state"] == "PENDING_NODE_ASSIGNMENT"]
        return len(blocked) == 2 and waiting
    wait_for(all_in_place, timeout=30, what="both waiters blocked and the task pending")
    assert findings("resource_deadlock") == []
    touch(gate)
    assert shoal.get(calls, timeout=30) == [True, True]
    for w in waiters:
        shoal.kill(w)
    assert shoal.get(later, timeout=30) == 1


@pytest.mark.parametrize("bundles, strategy, why", [
    ([{"CPU": 100}], "PACK", "CPU: 100"),
    ([{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", "STRICT_SPREAD")])
def test_a_placement_group_that_can_never_be_placed(infeasible_waits, shoal_cluster,
                                                     bundles, strategy, why):
    pg = placement_group(bundles, strategy=strategy, name="never")
    (f,) = wait_for(lambda: findings("placement_group"), timeout=30, what="the pending group")
    assert f["message"].startswith("placement group never is not placed: ")
    assert why in f["message"]
    from shoal.util.placement_group import remove_placement_group
    remove_placement_group(pg)
