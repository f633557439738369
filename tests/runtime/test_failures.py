"""Errors and fault tolerance: user exceptions, crashed workers, retries,
cancellation, serialization errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shoal
from shoal.exceptions import (SerializationError, TaskCancelledError, TaskError,
                              WorkerCrashedError)
from tests.conftest import touch, wait_for, wait_for_file


class CustomError(ValueError):
    pass


@shoal.remote
def raise_custom(msg):
    raise CustomError(msg)


def test_user_exception_keeps_its_class_and_remote_traceback(shoal_cluster):
    with pytest.raises(CustomError) as info:
        shoal.get(raise_custom.remote("boom"))
    err = info.value
    assert isinstance(err, TaskError)
    assert "boom" in str(err) and "raise_custom" in str(err)
    assert "Traceback" in err.traceback_str
    assert "shoal/worker" not in err.traceback_str   # the user's frames only
    assert isinstance(err.cause, CustomError)


@shoal.remote
def held(gate):
    return wait_for_file(gate)


def test_get_of_several_raises_as_soon_as_one_fails(shoal_cluster, tmp_path):
    """As in Ray: the error comes without waiting for the others, from the
    driver and from inside a task; the others still finish afterwards."""
    gate = str(tmp_path / "gate")
    slow = held.remote(gate)
    with pytest.raises(CustomError, match="early"):
        shoal.get([slow, raise_custom.remote("early")], timeout=60)

    @shoal.remote
    def gets_both(gate):
        try:
            shoal.get([held.options(num_cpus=0).remote(gate), raise_custom.remote("inner")],
                      timeout=60)
        except CustomError as e:
            return "raised: " + str(e.cause)
    assert shoal.get(gets_both.remote(gate), timeout=60) == "raised: inner"
    already_failed = raise_custom.remote("ready")
    with pytest.raises(CustomError):
        shoal.get(already_failed)
    with pytest.raises(CustomError, match="ready"):
        shoal.get([slow, already_failed], timeout=60)
    assert not os.path.exists(gate)        # none of it waited for the held tasks
    touch(gate)
    assert shoal.get(slow, timeout=60) is True


def test_errors_propagate_through_dependent_tasks(shoal_cluster):
    @shoal.remote
    def consume(x):
        return x

    with pytest.raises(CustomError):
        shoal.get(consume.remote(raise_custom.remote("upstream")))


def test_exception_from_a_nested_task_keeps_the_original_class(shoal_cluster):
    @shoal.remote
    def outer():
        return shoal.get(raise_custom.remote("deep"))

    with pytest.raises(CustomError, match="deep"):
        shoal.get(outer.remote())


def _die_once(flag_path):
    if not os.path.exists(flag_path):
        open(flag_path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


def test_sigkilled_worker_retries_the_task(shoal_cluster, tmp_path):
    f = shoal.remote(max_retries=1)(_die_once)
    assert shoal.get(f.remote(str(tmp_path / "flag")), timeout=60) == "second attempt"


def test_crashes_past_max_retries_raise_worker_crashed(shoal_cluster):
    @shoal.remote(max_retries=2)
    def always_die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        shoal.get(always_die.remote(), timeout=60)
    # the cluster keeps working afterwards
    assert shoal.get(shoal.remote(lambda: 5).remote(), timeout=30) == 5


def test_default_max_retries_is_three(shoal_cluster, tmp_path):
    counter = tmp_path / "attempts"

    @shoal.remote
    def count_and_die(path):
        with open(path, "a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError):
        shoal.get(count_and_die.remote(str(counter)), timeout=60)
    assert counter.read_text() == "xxxx"   # the first try and 3 retries


def test_retry_exceptions_retries_application_errors(shoal_cluster, tmp_path):
    flag = tmp_path / "flag"

    @shoal.remote(max_retries=2, retry_exceptions=[CustomError])
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise CustomError("first try fails")
        return "ok"

    assert shoal.get(flaky.remote(str(flag)), timeout=30) == "ok"

    @shoal.remote(max_retries=2, retry_exceptions=[KeyError])
    def wrong_kind():
        raise CustomError("not retried")

    with pytest.raises(CustomError):
        shoal.get(wrong_kind.remote(), timeout=30)


def test_application_errors_are_not_retried_by_default(shoal_cluster, tmp_path):
    counter = tmp_path / "n"

    @shoal.remote(max_retries=3)
    def fail(path):
        with open(path, "a") as f:
            f.write("x")
        raise CustomError("once")

    with pytest.raises(CustomError):
        shoal.get(fail.remote(str(counter)))
    assert counter.read_text() == "x"


@shoal.remote
def spin(path):
    open(path, "w").close()
    while True:
        time.sleep(0.01)


def test_cancel_interrupts_a_running_task(shoal_cluster, tmp_path):
    started = tmp_path / "started"
    ref = spin.remote(str(started))
    wait_for(started.exists, timeout=30, what="the task to start")
    shoal.cancel(ref)
    with pytest.raises(TaskCancelledError):
        shoal.get(ref, timeout=30)


def test_force_cancel_kills_the_worker_and_is_not_retried(shoal_cluster, tmp_path):
    started = tmp_path / "started"
    ref = spin.remote(str(started))
    wait_for(started.exists, timeout=30, what="the task to start")
    shoal.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        shoal.get(ref, timeout=30)
    assert shoal.get(shoal.remote(lambda: 1).remote(), timeout=30) == 1


def test_cancel_of_a_queued_task(shoal_cluster, tmp_path):
    blockers = [spin.remote(str(tmp_path / f"b{i}")) for i in range(2)]
    queued = shoal.remote(lambda: "ran").remote()
    shoal.cancel(queued)
    with pytest.raises(TaskCancelledError):
        shoal.get(queued, timeout=30)
    for b in blockers:
        shoal.cancel(b, force=True)


def test_recursive_cancel_reaches_child_tasks(shoal_cluster, tmp_path):
    child_started = tmp_path / "child"

    @shoal.remote
    def parent(path):
        return shoal.get(spin.remote(path))

    ref = parent.remote(str(child_started))
    wait_for(child_started.exists, timeout=30, what="the child task to start")
    shoal.cancel(ref, recursive=True)
    with pytest.raises(TaskCancelledError):
        shoal.get(ref, timeout=30)
    # both CPUs come back: the child was cancelled too
    wait_for(lambda: shoal.available_resources().get("CPU") == 2, timeout=30,
             what="CPUs to be released")


def test_unserializable_argument_names_the_argument(shoal_cluster):
    @shoal.remote
    def takes(x, y=None):
        return 1

    with pytest.raises(SerializationError, match="argument 0 of .*takes.*lock"):
        takes.remote(threading.Lock())
    with pytest.raises(SerializationError, match="keyword argument 'y'"):
        takes.remote(1, y=threading.Lock())


def test_unserializable_return_value_is_a_clear_error(shoal_cluster):
    @shoal.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(SerializationError, match="return value"):
        shoal.get(returns_lock.remote())


def test_unpicklable_exception_still_reports_its_message(shoal_cluster):
    @shoal.remote
    def raise_odd():
        class Odd(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")
        raise Odd("odd message")

    with pytest.raises(TaskError, match="odd message"):
        shoal.get(raise_odd.remote())


def test_worker_output_reaches_the_driver_with_a_prefix(tmp_path):
    # a driver of its own, so its whole terminal output can be read at the end
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, sys, shoal\n"
        "@shoal.remote\n"
        "def chatty():\n"
        "    print('hello from the worker')\n"
        "    print('and to stderr', file=sys.stderr)\n"
        "    return os.getpid()\n"
        "@shoal.remote\n"
        "class Talker:\n"
        "    def say(self):\n"
        "        print('hello from the actor')\n"
        "        return os.getpid()\n"
        # one write per line: print() writes its parts one by one, and the
        # relay thread may write the workers' lines in between
        "sys.stdout.write(f'PID {shoal.get(chatty.remote())}\\n')\n"
        "sys.stdout.write(f'APID {shoal.get(Talker.remote().say.remote())}\\n')\n"
        "shoal.shutdown()\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pid = proc.stdout.split("PID ")[1].split()[0]
    apid = proc.stdout.split("APID ")[1].split()[0]
    assert f"(chatty pid={pid}) hello from the worker" in proc.stdout.splitlines()
    assert f"(chatty pid={pid}) and to stderr" in proc.stderr.splitlines()
    assert f"(Talker pid={apid}) hello from the actor" in proc.stdout.splitlines()


@pytest.mark.cluster(num_cpus=1, log_to_driver=False)
def test_log_to_driver_false_silences_workers(shoal_cluster, capfd):
    @shoal.remote
    def chatty():
        print("should not appear")
        return 1

    assert shoal.get(chatty.remote()) == 1
    shoal.shutdown()
    out, err = capfd.readouterr()
    assert "should not appear" not in out + err
