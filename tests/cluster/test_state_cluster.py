"""The state API and `shoal list` across nodes (node/introspect.py's fan-out
and merge): real head and node agents on loopback, a driver here connected
to the head's node. A task forwarded to another node is listed once, as
that node ran it; an actor once, on the node hosting it; a node that does
not answer in time is named, never waited for."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest

import shoal
from shoal.util import state

from ..conftest import touch, wait_for, wait_for_file
from .test_multinode import GET_TIMEOUT, cluster, driver, node_id  # noqa: F401


@shoal.remote
def where_held(gate):
    assert wait_for_file(gate)
    return node_id()


@shoal.remote
def make_array(n):
    return np.ones(n, np.uint8)


@shoal.remote
def fails_here():
    raise ValueError("failed on " + node_id())


@shoal.remote
class Where:
    def node(self):
        return node_id(), os.getpid()


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def quick_state(cluster_env, monkeypatch):
    """State queries give up on a silent node after 1 s, and the head takes
    far longer to call a silent node dead (set before the cluster's
    processes start, which read them): a node declared dead while it is
    asked is not in the cluster any more, and a loaded machine's 1 s query
    could outlast the suite's 2 s node timeout."""
    monkeypatch.setenv("SHOAL_STATE_TIMEOUT_S", "1")
    monkeypatch.setenv("SHOAL_NODE_TIMEOUT_S", "60")


@pytest.mark.timeout(90)
def test_tasks_and_actors_on_other_nodes_are_listed_once_where_they_ran(cluster, driver,
                                                                         tmp_path):
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    gate = str(tmp_path / "gate")
    held = where_held.options(resources={"at_b": 0.01}).remote(gate)
    actor = Where.options(resources={"at_b": 0.01}).remote()
    actor_node, actor_pid = shoal.get(actor.node.remote(), timeout=GET_TIMEOUT)
    assert actor_node == b

    def running_on_b():
        rows = state.list_tasks(filters=[("name", "=", "where_held")], detail=True)
        return len(rows) == 1 and rows[0]["state"] == "RUNNING" and rows[0]
    row = wait_for(running_on_b, timeout=30, what="the held task running on b")
    assert row["node_id"] == b and not row["forwarded"]
    assert psutil.Process(row["worker_pid"]).is_running()
    touch(gate)
    assert shoal.get(held, timeout=GET_TIMEOUT) == b
    with pytest.raises(ValueError):
        shoal.get(fails_here.options(resources={"at_b": 0.01}).remote(), timeout=GET_TIMEOUT)

    def ended():
        rows = {r["name"]: r for r in state.list_tasks(limit=None, detail=True)
                if r["name"] in ("where_held", "fails_here")}
        return len(rows) == 2 and all(r["state"] in ("FINISHED", "FAILED")
                                      for r in rows.values()) and rows
    rows = wait_for(ended, timeout=30, what="both tasks ended")
    assert rows["where_held"]["node_id"] == b and rows["where_held"]["state"] == "FINISHED"
    assert rows["where_held"]["run_us"][1] is not None
    # its lifecycle: submitted on the driver's node, sent to b, run by a worker of b
    events = rows["where_held"]["events"]
    states = [e["state"] for e in events]
    assert states[0] == "PENDING_ARGS_AVAIL" and states[-1] == "FINISHED", states
    sent = events[states.index("SUBMITTED_TO_NODE")]
    handed = events[states.index("SUBMITTED_TO_WORKER")]
    assert sent["node_id"] == b and handed["node_id"] == b
    assert states.index("SUBMITTED_TO_NODE") < states.index("RUNNING")
    assert rows["fails_here"]["error_type"] == "ValueError"
    assert b in rows["fails_here"]["error_message"]
    assert len(state.list_tasks(filters=[("name", "=", "where_held")], limit=None)) == 1

    (a,) = state.list_actors(filters=[("class_name", "=", "Where")])
    assert a["node_id"] == b and a["pid"] == actor_pid and a["state"] == "ALIVE"
    workers = state.list_workers(limit=None)
    assert {w["node_id"] for w in workers} >= {b, cluster.ids["head"]}
    assert actor_pid in {w["pid"] for w in workers if w["node_id"] == b}
    nodes = {n["node_id"]: n for n in state.list_nodes()}
    assert nodes[b]["state"] == "ALIVE" and nodes[cluster.ids["head"]]["is_head_node"]
    assert nodes[b]["resources_total"]["at_b"] == 1
    memory = psutil.virtual_memory()
    assert 0 < nodes[b]["stats"]["memory_used"] <= nodes[b]["stats"]["memory_total"]
    assert nodes[b]["stats"]["memory_total"] <= memory.total
    assert state.summarize_tasks()["summary"]["where_held"]["state_counts"] == {"FINISHED": 1}
    assert state.summarize_actors()["summary"]["Where"]["state_counts"] == {"ALIVE": 1}


@pytest.mark.timeout(90)
def test_a_node_that_does_not_answer_is_named_not_waited_for(quick_state, cluster, driver):
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    agent = psutil.Process(cluster.pids["b"])
    agent.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(state.StateError, match=b[:12]):
            state.list_workers()
        with pytest.warns(UserWarning, match=b[:12]):
            rows = state.list_workers(raise_on_missing_output=False, limit=None)
        assert rows and {w["node_id"] for w in rows} == {cluster.ids["head"]}
    finally:
        agent.send_signal(signal.SIGCONT)


@pytest.mark.timeout(120)
def test_the_cli_lists_summarises_and_writes_a_timeline(cluster, driver, tmp_path):
    """`shoal list / summary / timeline / memory` against the running
    cluster, as a user types them; bad input gets a clear message."""
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    shoal.get([where_held.options(resources={"at_b": 0.01}).remote(str(tmp_path))
               for _ in range(3)], timeout=GET_TIMEOUT)
    with pytest.raises(ValueError):
        shoal.get(fails_here.remote(), timeout=GET_TIMEOUT)

    out = cli("list", "tasks", "--filter", "name=where_held")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["TASK_ID", "NAME", "STATE"]
    assert len(lines) == 4 and all("FINISHED" in line and b in line for line in lines[1:])

    out = cli("list", "tasks", "--filter", "state=FAILED", "--format", "json")
    assert out.returncode == 0, out.stderr
    (failed,) = json.loads(out.stdout)
    assert failed["name"] == "fails_here" and failed["error_type"] == "ValueError"

    out = cli("summary", "tasks")
    assert out.returncode == 0, out.stderr
    assert "where_held" in out.stdout and "FINISHED: 3" in out.stdout

    out = cli("list", "nodes")
    assert out.returncode == 0 and b in out.stdout and cluster.ids["head"] in out.stdout

    trace = tmp_path / "trace.json"
    out = cli("timeline", "--output", str(trace))
    assert out.returncode == 0, out.stderr
    runs = [e for e in json.loads(trace.read_text()) if e["ph"] == "X"]
    assert sum(e["name"] == "where_held" for e in runs) == 3

    out = cli("memory", "--stats-only")
    assert out.returncode == 0, out.stderr
    stores = [line for line in out.stdout.splitlines() if "object store" in line]
    assert len(stores) == 2 and any(b in line for line in stores)

    # objects by size and owner, on every node: a put of this driver, and a
    # result made on b for it (held on b, a marker of it on the head's node)
    mine = shoal.put(np.zeros(3_000_000, np.uint8))
    theirs = make_array.options(resources={"at_b": 0.01}).remote(2_000_000)
    shoal.wait([theirs], timeout=GET_TIMEOUT)
    out = cli("memory")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        if line[:24] in (mine.hex()[:24], theirs.hex()[:24]):
            rows.setdefault(line.split()[0], []).append(line)
    (put_row,) = rows[mine.hex()]
    assert "3000" in put_row and f"driver pid {os.getpid()}" in put_row
    assert cluster.ids["head"][:12] in put_row
    made = rows[theirs.hex()]
    assert any(b[:12] in line and "SHARED_MEMORY" in line and "make_array" in line
               for line in made)
    lines = out.stdout.splitlines()
    assert lines.index(put_row) < lines.index(made[0])          # largest first
    del mine, theirs

    # the CLI connects as a tool: neither its earlier runs nor this one is a job
    # or a worker; this process, a driver, is one job, RUNNING
    out = cli("list", "jobs", "--format", "json")
    assert out.returncode == 0, out.stderr
    drivers = [j for j in json.loads(out.stdout) if j["type"] == "DRIVER"]
    assert [(j["driver_pid"], j["status"]) for j in drivers] == [(os.getpid(), "RUNNING")]
    out = cli("list", "workers", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [w["pid"] for w in json.loads(out.stdout) if w["worker_type"] == "DRIVER"] == \
        [os.getpid()]

    out = cli("list", "tasks", "--filter", "colour=red")
    assert out.returncode == 1 and "no field 'colour'" in out.stderr
    out = cli("list", "tasks", "--filter", "nonsense")
    assert out.returncode == 1 and "KEY=VALUE" in out.stderr
    out = cli("list", "things")
    assert out.returncode == 2 and "invalid choice" in out.stderr


@pytest.mark.timeout(60)
def test_the_cli_without_a_cluster_says_how_to_start_one(cluster_env):
    out = cli("list", "tasks")
    assert out.returncode == 1
    assert "no running shoal node" in out.stderr and "shoal start --head" in out.stderr


@shoal.remote
def prints_on(tag):
    print("printed", tag, "on", node_id())
    print("warned", tag, file=sys.stderr)
    return node_id()


@pytest.mark.timeout(90)
def test_logs_of_a_task_on_another_node_from_python_and_the_cli(cluster, driver):
    """The task ran on b; its output is read from b's log files through
    the head node's link, by task id and by the worker's pid."""
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    ref = prints_on.options(resources={"at_b": 0.01}).remote("x1")
    assert shoal.get(ref, timeout=GET_TIMEOUT) == b
    task_id = ref.hex()[:24]
    row = wait_for(lambda: (r := state.get_task(task_id)) and r["state"] == "FINISHED" and r,
                   timeout=30, what="the task's row")
    assert row["node_id"] == b
    assert "".join(state.get_log(task_id=task_id)) == f"printed x1 on {b}\n"
    assert "".join(state.get_log(pid=row["worker_pid"], node_id=b, err=True)).endswith(
        "warned x1\n")

    out = cli("logs", "task", "--id", task_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"printed x1 on {b}\n"
    out = cli("logs", "worker", "--pid", str(row["worker_pid"]), "--err", "--tail", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "warned x1\n"
    out = cli("logs", "task")
    assert out.returncode == 1 and "--id" in out.stderr
    out = cli("logs", "worker", "--pid", "999999999")
    assert out.returncode == 1 and "no worker with pid" in out.stderr


@pytest.mark.timeout(90)
def test_shoal_doctor_explains_a_task_no_node_can_run(cluster, driver):
    """In a cluster an impossible request waits for a node that fits; the
    doctor says no node has it, with the largest node's numbers."""
    cluster.add("b", num_cpus=2)
    driver()
    cluster.wait_linked()
    stuck = where_held.options(num_cpus=5).remote("never")      # 3 CPUs in all
    waiting = where_held.remote(stuck)

    def found():
        out = cli("doctor", "--format", "json")
        assert out.returncode == 0, out.stderr
        kinds = {f["kind"]: f for f in json.loads(out.stdout)}
        return len(kinds) >= 2 and kinds
    kinds = wait_for(found, timeout=60, interval=0.5, what="the doctor's findings")
    assert kinds["infeasible"]["task_id"] == stuck.hex()[:24]
    assert "CPU: 5" in kinds["infeasible"]["message"]
    assert "the most CPU on one node is 2" in kinds["infeasible"]["message"]
    assert kinds["waiting_on_pending"]["task_id"] == waiting.hex()[:24]
    out = cli("doctor")
    assert out.returncode == 0 and "[infeasible]" in out.stdout and "can never be" in out.stdout
    shoal.cancel(stuck)


@shoal.remote
def advance(n):
    from shoal.util.tqdm import tqdm
    for _ in tqdm(range(n), desc="remote work", flush_interval_s=0.0):
        pass
    return node_id()


@pytest.mark.timeout(90)
def test_a_progress_bar_advanced_on_two_nodes_is_one_bar_in_the_driver(cluster, driver):
    """Tasks on the head's node and on b report through their nodes (b's
    over its link) to this driver, which sums them into one bar."""
    from shoal.node.progress import driver_progress
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    where = shoal.get([advance.options(resources={"at_b": 0.01}).remote(6),
                       advance.options(resources={"at_head": 0.01}).remote(4)],
                      timeout=GET_TIMEOUT)
    assert where == [b, cluster.ids["head"]]

    def summed():
        bar = driver_progress().bars.get("remote work")
        return bar is not None and bar.totals() == (10, 10, True)
    wait_for(summed, timeout=30, what="one bar summing both nodes' tasks")


@shoal.remote
def counted(n):
    from shoal.util.metrics import Counter
    Counter("rows_read", "rows read", tag_keys=("source",)).inc(n, tags={"source": "s3"})
    return node_id()


@pytest.mark.timeout(90)
def test_user_metrics_from_another_node_reach_the_prometheus_text(cluster, driver):
    """A counter incremented in a task on b reaches b's node, b's heartbeat
    carries it to the head, and the exported text has it under b's NodeId."""
    pytest.importorskip("prometheus_client", reason="the dashboard extra is not installed")
    from shoal.dashboard import prometheus
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    assert shoal.get(counted.options(resources={"at_b": 0.01}).remote(7),
                     timeout=GET_TIMEOUT) == b
    line = f'shoal_rows_read_total{{NodeId="{b}",source="s3"}} 7.0'
    text = wait_for(lambda: line in (t := prometheus.render(state.list_nodes()).decode()) and t,
                    timeout=30, interval=0.2, what="b's counter in the exported text")
    assert f'shoal_node_workers{{NodeId="{cluster.ids["head"]}"}}' in text


SECOND_DRIVER = """
import json, shoal
shoal.init(address="auto")

@shoal.remote
def job(_):
    return shoal.get_runtime_context().get_job_id()

mine = shoal.get_runtime_context().get_job_id()
ran = shoal.get([job.remote(i) for i in range(4)]
                + [job.options(resources={"at_b": 0.01}).remote(0)], timeout=60)
print(json.dumps({"mine": mine, "ran": ran}))
"""


@pytest.mark.timeout(90)
def test_each_driver_is_a_job_and_its_tasks_on_any_node_carry_it(cluster, driver):
    """Two drivers on one cluster: each has its own job id (list_jobs), and a
    task reports and is listed with the job that submitted it, wherever it
    ran and whichever job's work its worker did before."""
    b = cluster.add("b")
    driver()
    cluster.wait_linked()

    @shoal.remote
    def job(_):
        return shoal.get_runtime_context().get_job_id()
    mine = shoal.get_runtime_context().get_job_id()
    assert set(shoal.get([job.remote(i) for i in range(4)], timeout=GET_TIMEOUT)) == {mine}

    other = subprocess.run([sys.executable, "-c", SECOND_DRIVER], capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    second = json.loads(other.stdout.splitlines()[-1])
    assert second["mine"] != mine and set(second["ran"]) == {second["mine"]}

    jobs = {j["driver_pid"]: j for j in state.list_jobs() if j["type"] == "DRIVER"}
    assert jobs[os.getpid()]["job_id"] == mine and jobs[os.getpid()]["status"] == "RUNNING"
    (finished,) = [j for pid, j in jobs.items() if pid != os.getpid()]
    assert finished["job_id"] == second["mine"] and finished["status"] == "FINISHED"
    theirs = state.list_tasks(filters=[("job_id", "=", second["mine"])], limit=None)
    assert len(theirs) == 5 and {t["name"] for t in theirs} == {"job"}
    assert b in {t["node_id"] for t in theirs}               # the one sent to b too
    ours = state.list_tasks(filters=[("job_id", "=", mine), ("name", "=", "job")], limit=None)
    assert len(ours) == 4
