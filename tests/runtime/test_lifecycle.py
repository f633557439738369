"""Start and stop: nothing outlives the driver, however the driver ends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil

from tests.conftest import wait_for

DRIVER = textwrap.dedent("""
    import os, sys, time
    import shoal

    shoal.init(num_cpus=2)

    @shoal.remote
    def pid_then_sleep(t):
        time.sleep(t)
        return os.getpid()

    @shoal.remote
    class Holder:
        def pid(self):
            return os.getpid()

    h = Holder.remote()
    pids = set(shoal.get([pid_then_sleep.remote(0.2) for _ in range(4)])) | {shoal.get(h.pid.remote())}
    busy = pid_then_sleep.remote(60)        # still running when the driver ends
    print("PIDS", " ".join(map(str, sorted(pids))), flush=True)
    mode = sys.argv[1]
    if mode == "hang":
        time.sleep(120)
    elif mode == "raise":
        raise SystemExit(3)
    # "exit": fall off the end without calling shutdown()
""")


def _run_driver(tmp_path, mode):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line
    pids = [int(p) for p in line.split()[1:]]
    assert pids
    return proc, pids


def _all_gone(pids) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_driver_killed_with_sigkill_leaves_no_worker(tmp_path):
    proc, pids = _run_driver(tmp_path, "hang")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: _all_gone(pids), timeout=15, what="workers to die with their driver")


def test_driver_exiting_without_shutdown_leaves_no_worker(tmp_path):
    proc, pids = _run_driver(tmp_path, "exit")
    assert proc.wait(timeout=60) == 0
    wait_for(lambda: _all_gone(pids), timeout=15, what="workers to exit")


def test_driver_raising_leaves_no_worker(tmp_path):
    proc, pids = _run_driver(tmp_path, "raise")
    assert proc.wait(timeout=60) == 3
    wait_for(lambda: _all_gone(pids), timeout=15, what="workers to exit")


def test_shutdown_then_init_again_gives_a_fresh_cluster():
    import shoal
    try:
        shoal.init(num_cpus=1)
        first = shoal.get_runtime_context().get_node_id()
        shoal.shutdown()
        shoal.init(num_cpus=1)
        assert shoal.get_runtime_context().get_node_id() != first
        assert shoal.get(shoal.remote(lambda: 1).remote()) == 1
    finally:
        shoal.shutdown()


def test_interactive_session_functions_run(tmp_path):
    # a function typed at the python prompt lives in __main__ and is shipped by value
    code = ("import shoal\n"
            "def sq(x):\n    return x * x\n\n"
            "f = shoal.remote(sq)\n"
            "print('RESULT', shoal.get(f.remote(7)))\n")
    out = subprocess.run([sys.executable, "-i"], input=code, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert "RESULT 49" in out.stdout, out.stderr[-2000:]


def test_many_driver_threads_submit_and_get_at_once(shoal_cluster):
    import threading
    import shoal

    @shoal.remote
    def double(x):
        return 2 * x

    errors = []

    def client():
        try:
            for i in range(200):
                assert shoal.get(double.remote(i), timeout=30) == 2 * i
            assert shoal.get([double.remote(i) for i in range(200)], timeout=30) == \
                [2 * i for i in range(200)]
        except Exception as e:   # collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)


def test_shutdown_wakes_a_thread_blocked_in_get():
    import threading
    import time
    import shoal
    from shoal.exceptions import ShoalError

    shoal.init(num_cpus=1)
    try:
        @shoal.remote
        def slow():
            time.sleep(60)

        ref = slow.remote()
        outcome = []

        def getter():
            try:
                shoal.get(ref)
            except ShoalError as e:
                outcome.append(str(e))

        t = threading.Thread(target=getter)
        t.start()
        from shoal.core import current_core
        node = current_core().node
        wait_for(lambda: len(node.requests) == 1, timeout=30, what="the get to be waiting")
    finally:
        shoal.shutdown()
    t.join(30)
    assert not t.is_alive() and "shut down" in outcome[0]
