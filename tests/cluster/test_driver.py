"""Drivers connecting to a running cluster: ``shoal.init(address="auto")``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from shoal.cluster import launch

from ..conftest import FILE_HELPERS, wait_for, wait_for_file


def run_driver(code: str, timeout: float = 60, env_extra=None, wait=True):
    env = dict(os.environ, **(env_extra or {}))
    script = textwrap.dedent(code)
    if not wait:
        return subprocess.Popen([sys.executable, "-c", script], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)


def free_cpus() -> float:
    (node,) = [n for n in launch.status()["nodes"] if n["state"] == "ALIVE"]
    return node["available"].get("CPU", 0)


def test_a_driver_runs_tasks_objects_and_actors_on_the_cluster(head):
    out = run_driver("""
        import numpy as np, shoal
        info = shoal.init(address="auto")
        assert info["address"] == "auto"

        @shoal.remote
        def square(x):
            return x * x

        @shoal.remote
        def total(a):
            return int(a.sum())

        @shoal.remote
        def nested(n):
            return sum(shoal.get([square.remote(i) for i in range(n)]))

        @shoal.remote
        class Counter:
            def __init__(self):
                self.n = 0
            def inc(self):
                self.n += 1
                return self.n

        assert shoal.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
        big = np.arange(10**6)
        ref = shoal.put(big)
        assert shoal.get(total.remote(ref)) == int(big.sum())
        back = shoal.get(ref)
        assert np.array_equal(back, big) and not back.flags.writeable     # zero-copy view
        assert shoal.get(nested.remote(10)) == sum(i * i for i in range(10))
        c = Counter.options(name="counter").remote()
        assert [shoal.get(c.inc.remote()) for _ in range(3)] == [1, 2, 3]
        assert shoal.get(shoal.get_actor("counter").inc.remote()) == 4
        assert shoal.cluster_resources()["CPU"] == 1
        shoal.shutdown()
        print("OK")
    """, env_extra={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_driver_that_goes_away_releases_its_actors_and_objects(head, tmp_path, how):
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = run_driver(f"""
        import os, time, numpy as np, shoal
        shoal.init(address="auto")

        @shoal.remote(num_cpus=1)
        class Holder:
            def ping(self):
                return 1

        h = Holder.remote()
        shoal.get(h.ping.remote())
        keep = shoal.put(np.ones(10**6))
        open({str(ready)!r}, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)   # the test checks the node meanwhile, then lets us go
    """, wait=False)
    try:
        assert wait_for_file(str(ready), 60)
        wait_for(lambda: free_cpus() == 0, what="the driver's actor to hold the CPU")
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        else:
            go.touch()         # the driver returns from its script and exits
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: free_cpus() == 1, timeout=20,
             what="the node to release the gone driver's actor")


def test_two_drivers_share_the_cluster(head):
    code = """
        import shoal
        shoal.init(address="auto")

        @shoal.remote
        def f(i):
            return i + 1

        assert shoal.get([f.remote(i) for i in range(200)]) == list(range(1, 201))
        print("OK")
    """
    a = run_driver(code, wait=False)
    b = run_driver(code, wait=False)
    for p in (a, b):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == "OK"


def test_a_driver_with_a_wrong_token_is_refused(head):
    out = run_driver("""
        import shoal
        try:
            shoal.init(address="auto")
        except ConnectionError as e:
            print("refused:", e)
    """, env_extra={"SHOAL_TOKEN": "0" * 64})
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "token" in out.stdout


def test_no_cluster_on_this_machine_is_a_clear_error(cluster_env):
    out = run_driver("""
        import shoal
        try:
            shoal.init(address="auto")
        except ConnectionError as e:
            print("error:", e)
        try:
            shoal.init(address="auto", num_cpus=2)
        except ValueError as e:
            print("error:", e)
    """)
    assert out.returncode == 0, out.stderr
    assert "no running shoal node on this machine" in out.stdout
    assert "cannot set them" in out.stdout


def test_workers_output_reaches_the_connected_driver(head):
    out = run_driver("""
        import shoal
        shoal.init(address="auto")

        @shoal.remote
        def chatty():
            import sys
            print("hello from the cluster")
            print("and to stderr", file=sys.stderr)
            return 1

        import io, sys, time
        seen_out, seen_err = io.StringIO(), io.StringIO()
        real_out, real_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = seen_out, seen_err
        assert shoal.get(chatty.remote()) == 1
        deadline = time.monotonic() + 30      # output travels apart from the result
        while time.monotonic() < deadline and not (
                "hello from the cluster" in seen_out.getvalue()
                and "and to stderr" in seen_err.getvalue()):
            time.sleep(0.01)
        sys.stdout, sys.stderr = real_out, real_err
        print(seen_out.getvalue())
        print(seen_err.getvalue(), file=sys.stderr)
        shoal.shutdown()
    """)
    assert out.returncode == 0, out.stderr
    assert "(chatty pid=" in out.stdout and "hello from the cluster" in out.stdout
    assert "and to stderr" in out.stderr


def test_each_driver_sees_only_its_own_jobs_output(head, tmp_path):
    """Two drivers on one node: what a job's tasks print goes to that job's
    driver, not to the other. Each driver prints through a task, waits to
    see it, then (once the other has seen its own) prints once more: had
    the other's line been sent here, it would have arrived before that."""
    code = FILE_HELPERS + """
import io, os, sys, time
import shoal
me, other, marks = sys.argv[1], sys.argv[2], sys.argv[3]
shoal.init(address="auto")

@shoal.remote(num_cpus=0)
def say(text):
    print(text)

seen = io.StringIO()
real, sys.stdout = sys.stdout, seen

def show(text):
    shoal.get(say.remote(text))
    deadline = time.monotonic() + 30       # output travels apart from the result
    while text not in seen.getvalue():
        assert time.monotonic() < deadline, "never saw " + text
        time.sleep(0.01)

show("first words of " + me)
touch(os.path.join(marks, me))
assert wait_for_file(os.path.join(marks, other), 60)
show("last words of " + me)
sys.stdout = real
print(seen.getvalue())
"""
    procs = {name: subprocess.Popen([sys.executable, "-c", code, name, other, str(tmp_path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, other in (("alpha", "beta"), ("beta", "alpha"))}
    for name, p in procs.items():
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        other = "beta" if name == "alpha" else "alpha"
        assert f"first words of {name}" in out and f"last words of {name}" in out
        assert other not in out, out
