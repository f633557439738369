"""The state API on one node (shoal.util.state, node/introspect.py): tasks
with their lifecycle and errors, actors, workers, objects, placement
groups, jobs, summaries, filters, and the timeline. Every wait polls a
condition with a deadline; tasks are held by gate files, never by sleeps."""
from __future__ import annotations

import json
import os
import signal

import pytest

import shoal
from shoal.util import state
from shoal.util.placement_group import placement_group, remove_placement_group
from tests.conftest import touch, wait_for, wait_for_file


@shoal.remote
def held(gate, value=None):
    assert wait_for_file(gate)
    return value


@shoal.remote
def plus_one(x):
    return x + 1


@shoal.remote
def fails(msg):
    raise KeyError(msg)


@shoal.remote
class Box:
    def __init__(self, v):
        self.v = v

    def get(self):
        return self.v

    def wait(self, gate):
        return wait_for_file(gate)

    def pid(self):
        return os.getpid()


def tasks_named(name, **filters):
    rows = state.list_tasks(filters=[("name", "=", name)] + [(k, "=", v) for k, v in
                                                             filters.items()],
                            limit=None, detail=True)
    return rows


def one_task(name):
    rows = tasks_named(name)
    assert len(rows) == 1, rows
    return rows[0]


def test_a_task_goes_through_its_states_with_timestamps(shoal_cluster, tmp_path):
    """Waiting for an argument, waiting for a CPU, running on a worker pid,
    finished; each state in ``events`` in order, with times that only grow."""
    gate = str(tmp_path / "gate")
    first = held.remote(gate, 1)                       # holds one CPU
    second = held.options(name="second").remote(gate, 2)    # holds the other
    after = plus_one.remote(first)                     # waits for first's result
    hog = held.options(name="hog", num_cpus=2).remote(gate)  # waits for both CPUs
    wait_for(lambda: one_task("held")["state"] == "RUNNING" and
             one_task("second")["state"] == "RUNNING", timeout=30,
             what="both held tasks to run")
    waiting = one_task("plus_one")
    assert waiting["state"] == "PENDING_ARGS_AVAIL"
    assert waiting["pending_args"] == [first.hex()]
    hog_row = one_task("hog")
    assert hog_row["state"] == "PENDING_NODE_ASSIGNMENT"
    assert hog_row["required_resources"] == {"CPU": 2.0}
    running = one_task("held")
    assert running["worker_pid"] in {w["pid"] for w in state.list_workers()}
    assert running["node_id"] == shoal.get_runtime_context().get_node_id()
    assert running["start_time_ms"] and running["end_time_ms"] is None

    touch(gate)
    assert shoal.get([after, second, hog], timeout=60) == [2, 2, None]
    wait_for(lambda: one_task("plus_one")["state"] == "FINISHED", timeout=10,
             what="plus_one's row to say FINISHED")
    done = one_task("plus_one")
    names = [e["state"] for e in done["events"]]
    assert names == ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
                     "RUNNING", "FINISHED"]
    times = [e["created_ms"] for e in done["events"]]
    assert times == sorted(times)
    handed = done["events"][2]                   # scheduled here, on the worker that ran it
    assert handed["node_id"] == done["node_id"] and handed["worker_pid"] == done["worker_pid"]
    assert done["creation_time_ms"] <= done["start_time_ms"] <= done["end_time_ms"]
    assert done["type"] == "NORMAL_TASK"
    assert done["error_type"] is None


def test_failed_tasks_carry_their_error_type_and_message(shoal_cluster):
    """The user's own exception type; a task whose argument failed carries
    that error; a crashed worker's task says WorkerCrashedError."""
    bad = fails.remote("no such key")
    with pytest.raises(KeyError):
        shoal.get(bad)
    with pytest.raises(KeyError):
        shoal.get(plus_one.remote(bad))

    @shoal.remote(max_retries=0)
    def crash():
        os.kill(os.getpid(), signal.SIGKILL)
    with pytest.raises(shoal.exceptions.WorkerCrashedError):
        shoal.get(crash.remote())
    failed = {r["name"]: r for r in state.list_tasks(filters=[("state", "=", "FAILED")])}
    assert failed["fails"]["error_type"] == "KeyError"
    assert "no such key" in failed["fails"]["error_message"]
    assert failed["plus_one"]["error_type"] == "KeyError"      # its argument's error
    assert failed["crash"]["error_type"] == "WorkerCrashedError"
    assert "SIGKILL" in failed["crash"]["error_message"]


def test_filters_limit_and_detail(shoal_cluster):
    shoal.get([plus_one.remote(i) for i in range(5)])
    with pytest.raises(KeyError):
        shoal.get(fails.remote("x"))
    assert len(state.list_tasks(filters=[("name", "=", "plus_one")])) == 5
    assert len(state.list_tasks(filters=[("state", "!=", "FINISHED")])) == 1
    assert len(state.list_tasks(filters=[("state", "=", "finished")])) == 5  # any case
    assert len(state.list_tasks(limit=2)) == 2
    brief, full = state.list_tasks(limit=1)[0], state.list_tasks(limit=1, detail=True)[0]
    assert "events" not in brief and "events" in full
    assert brief.state == brief["state"]                       # attribute access too
    with pytest.raises(ValueError, match="operator"):
        state.list_tasks(filters=[("state", ">", "x")])
    with pytest.raises(ValueError, match="no field 'colour'.*task_id"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="filter is"):
        state.list_tasks(filters=["state=RUNNING"])
    with pytest.raises(ValueError, match="limit"):
        state.list_tasks(limit=-1)


def test_get_task_and_summaries(shoal_cluster):
    ref = plus_one.remote(1)
    shoal.get(ref)
    row = state.get_task(ref.hex()[:24])
    assert row["name"] == "plus_one" and row["state"] == "FINISHED"
    assert state.get_task("00" * 12) is None
    with pytest.raises(ValueError):
        state.get_task(None)
    shoal.get([plus_one.remote(i) for i in range(3)])
    with pytest.raises(KeyError):
        shoal.get(fails.remote("x"))
    summary = state.summarize_tasks()["summary"]
    assert summary["plus_one"]["state_counts"] == {"FINISHED": 4}
    assert summary["fails"]["state_counts"] == {"FAILED": 1}
    assert summary["plus_one"]["type"] == "NORMAL_TASK"


def test_actors_and_their_calls(shoal_cluster, tmp_path):
    """An actor ALIVE on its worker pid with its calls (one running, others
    waiting their turn); after kill, DEAD with the reason; restarts counted."""
    gate = str(tmp_path / "gate")
    box = Box.options(name="box").remote(1)
    pid = shoal.get(box.pid.remote())
    calls = [box.wait.remote(gate) for _ in range(3)]
    wait_for(lambda: len(tasks_named("Box.wait", state="RUNNING")) == 1, timeout=30,
             what="one call running")
    assert len(tasks_named("Box.wait",
                           state="PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY")) == 2
    (row,) = state.list_actors(filters=[("class_name", "=", "Box")])
    assert row["state"] == "ALIVE" and row["name"] == "box" and row["pid"] == pid
    assert row["pending_calls"] == 2 and row["running_calls"] == 1
    assert state.get_actor(row["actor_id"])["pid"] == pid
    creation = one_task("Box")
    assert creation["type"] == "ACTOR_CREATION_TASK" and creation["state"] == "FINISHED"
    touch(gate)
    assert shoal.get(calls, timeout=60) == [True] * 3
    shoal.kill(box)
    wait_for(lambda: state.get_actor(row["actor_id"])["state"] == "DEAD", timeout=30,
             what="the actor to be DEAD")
    assert "shoal.kill" in state.get_actor(row["actor_id"])["death_cause"]

    phoenix = Box.options(max_restarts=1).remote(2)
    first_pid = shoal.get(phoenix.pid.remote())
    os.kill(first_pid, signal.SIGKILL)

    def restarted():
        try:
            return shoal.get(phoenix.pid.remote(), timeout=30) != first_pid
        except shoal.exceptions.ActorDiedError:     # a call that met the dying worker
            return False
    wait_for(restarted, timeout=30, what="the actor to restart")
    (row,) = state.list_actors(filters=[("state", "=", "ALIVE")])
    assert row["num_restarts"] == 1 and row["max_restarts"] == 1
    attempts = sorted(r["attempt_number"] for r in tasks_named("Box")
                      if r["actor_id"] == row["actor_id"])
    assert len(attempts) == 2         # the creation ran twice


def test_workers_alive_and_dead(shoal_cluster):
    box = Box.remote(0)
    pid = shoal.get(box.pid.remote())
    workers = state.list_workers(limit=None)
    assert [w["pid"] for w in workers if w["worker_type"] == "DRIVER"] == [os.getpid()]
    (actor_worker,) = [w for w in workers if w["pid"] == pid]
    assert actor_worker["actor_class"] == "Box" and actor_worker["is_alive"]
    os.kill(pid, signal.SIGKILL)

    def dead():
        rows = [w for w in state.list_workers(limit=None) if w["pid"] == pid]
        return rows and not rows[0]["is_alive"] and rows[0]
    row = wait_for(dead, timeout=30, what="the killed worker listed as dead")
    assert "SIGKILL" in row["exit_detail"] and row["end_time_ms"]


def test_objects_placement_groups_nodes_and_jobs(shoal_cluster):
    ref = shoal.put(b"x" * 1000)
    rows = state.get_objects(ref.hex())
    assert len(rows) == 1 and rows[0]["size"] >= 1000
    summary = state.summarize_objects()
    assert summary["total_objects"] >= 1 and "put" in summary["summary"]

    pg = placement_group([{"CPU": 1}], name="one")
    shoal.get(pg.ready(), timeout=30)
    (row,) = state.list_placement_groups()
    assert row["name"] == "one" and row["state"] == "CREATED" and row["bundles"] == {0: {"CPU": 1.0}}
    assert state.get_placement_group(pg.id.hex())["name"] == "one"
    remove_placement_group(pg)
    wait_for(lambda: state.list_placement_groups(filters=[("state", "=", "CREATED")]) == [],
             timeout=10, what="the group removed")

    (node,) = state.list_nodes()
    assert node["state"] == "ALIVE" and node["resources_total"]["CPU"] == 2
    assert node["node_id"] == shoal.get_runtime_context().get_node_id()
    (job,) = state.list_jobs()
    assert job["type"] == "DRIVER" and job["status"] == "RUNNING"
    assert job["driver_pid"] == os.getpid()


def test_the_state_api_works_inside_a_task(shoal_cluster):
    @shoal.remote
    def look():
        from shoal.util.state import list_tasks
        return [(r["name"], r["state"]) for r in list_tasks(filters=[("name", "=", "look")])]
    assert shoal.get(look.remote(), timeout=60) == [("look", "RUNNING")]


def test_timeline_is_a_chrome_trace_of_every_run(shoal_cluster, tmp_path):
    shoal.get([plus_one.remote(i) for i in range(4)])
    with pytest.raises(KeyError):
        shoal.get(fails.remote("x"))
    path = tmp_path / "trace.json"
    assert shoal.timeline(filename=str(path)) is None
    events = json.loads(path.read_text())
    runs = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in runs) == ["fails"] + ["plus_one"] * 4
    assert all(e["dur"] >= 0 and e["ts"] > 0 for e in runs)
    pids = {e["tid"] for e in runs}
    assert pids <= {w["pid"] for w in state.list_workers(limit=None)}
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert {f"worker pid={p}" for p in pids} <= names
    assert [e for e in runs if e["name"] == "fails"][0]["args"]["error"].startswith("KeyError")
    assert shoal.timeline() == events or len(shoal.timeline()) >= len(events)


def test_the_history_keeps_the_newest_tasks(monkeypatch):
    monkeypatch.setenv("SHOAL_TASK_HISTORY_SIZE", "10")
    shoal.init(num_cpus=1)
    try:
        refs = [plus_one.remote(i) for i in range(30)]
        shoal.get(refs)
        rows = state.list_tasks(limit=None)
        assert sorted(r["task_id"] for r in rows) == sorted(r.hex()[:24] for r in refs[-10:])
    finally:
        shoal.shutdown()


def test_a_limit_keeps_the_newest_tasks(shoal_cluster):
    refs = [plus_one.remote(i) for i in range(30)]
    shoal.get(refs)
    rows = state.list_tasks(limit=5)
    assert [r["task_id"] for r in rows] == [r.hex()[:24] for r in refs[-5:]]
    assert state.list_tasks(limit=0) == []


@shoal.remote
def job_of_task_and_child():
    here = shoal.get_runtime_context().get_job_id()
    return here, shoal.get(child_job.remote(), timeout=60)


@shoal.remote
def child_job():
    return shoal.get_runtime_context().get_job_id()


@shoal.remote
class JobOf:
    def job(self):
        return shoal.get_runtime_context().get_job_id()


def test_tasks_nested_tasks_and_actor_calls_carry_the_drivers_job(shoal_cluster):
    job = shoal.get_runtime_context().get_job_id()
    (row,) = state.list_jobs()
    assert row["job_id"] == job
    assert shoal.get(job_of_task_and_child.remote(), timeout=60) == (job, job)
    actor = JobOf.remote()
    assert shoal.get(actor.job.remote(), timeout=60) == job
    names = {"job_of_task_and_child", "child_job", "JobOf.job", "JobOf"}
    rows = [r for r in state.list_tasks(limit=None) if r["name"] in names]
    assert {r["name"] for r in rows} == names and {r["job_id"] for r in rows} == {job}
    assert len(state.list_tasks(filters=[("job_id", "=", job)], limit=None)) >= 4
    assert state.list_tasks(filters=[("job_id", "=", "00000000")]) == []
    (actor_row,) = state.list_actors(filters=[("class_name", "=", "JobOf")])
    assert actor_row["job_id"] == job
