"""Workers' output kept per worker and read back (node/logs.py,
worker/output.py, shoal.util.state.get_log): a task's own lines, an
actor's, stderr, tail, follow, and bad requests."""
from __future__ import annotations

import os
import sys
import threading

import pytest

import shoal
from shoal.util.state import get_log, list_actors, list_tasks, list_workers
from tests.conftest import touch, wait_for, wait_for_file


@shoal.remote(num_cpus=2)          # one at a time: they share a worker in turn
def say(tag, lines, newline=True):
    for i in range(lines):
        print(f"{tag} line {i}", end="\n" if newline or i < lines - 1 else "")
    print(f"{tag} to stderr", file=sys.stderr)
    return os.getpid()


@shoal.remote
class Speaker:
    def speak(self, word):
        print("speaker says", word)
        return os.getpid()

    def speak_until(self, gate, word):
        print("first", word, flush=True)
        assert wait_for_file(gate)
        print("then", word, flush=True)


@shoal.remote
class AsyncSpeaker:
    def __init__(self):
        self.arrived = 0

    async def talk(self, tag, parties):
        """Print, wait until ``parties`` calls have printed, print again."""
        import asyncio
        print(tag, "first")
        self.arrived += 1
        for _ in range(1500):
            if self.arrived >= parties:
                break
            await asyncio.sleep(0.01)
        print(tag, "then")
        return self.arrived


def test_overlapping_async_calls_each_read_back_their_own_lines(shoal_cluster):
    speaker = AsyncSpeaker.remote()
    refs = [speaker.talk.remote(tag, 3) for tag in ("a", "b", "c")]
    assert shoal.get(refs, timeout=60) == [3, 3, 3]     # all three overlapped
    for ref, tag in zip(refs, ("a", "b", "c")):
        wait_for(lambda: "".join(get_log(task_id=ref.hex()[:24])) == f"{tag} first\n{tag} then\n",
                 timeout=30, what=f"call {tag}'s own output")


def test_each_task_reads_back_only_what_it_printed(shoal_cluster):
    refs = [say.remote("alpha", 3), say.remote("beta", 2, newline=False), say.remote("gamma", 1)]
    pids = shoal.get(refs)
    rows = {t["task_id"]: t for t in list_tasks(filters=[("name", "=", "say")], limit=None)}
    by_tag = {}
    for ref, tag in zip(refs, ("alpha", "beta", "gamma")):
        by_tag[tag] = rows[ref.hex()[:24]]
    def reads(tag, expected, err=False):
        # (a worker's output reaches its log as the node reads the pipe, which
        # may be just after the task's result arrived)
        wait_for(lambda: "".join(get_log(task_id=by_tag[tag]["task_id"], err=err)) == expected,
                 timeout=30, what=f"{tag}'s output in its worker's log")
    reads("alpha", "alpha line 0\nalpha line 1\nalpha line 2\n")
    # beta's last line had no newline: it is kept all the same, and gamma's
    # output still starts on a line of its own
    reads("beta", "beta line 0\nbeta line 1\n")
    reads("gamma", "gamma line 0\n")
    reads("gamma", "gamma to stderr\n", err=True)
    if len(set(pids)) == 1:             # one worker ran all three: its whole output
        # is each task's output in one piece, in the order the worker ran them
        # (not necessarily the order they were submitted)
        # (beta's open last line gets its newline from the next task's output;
        # if beta ran last, the log ends without one)
        def closed(text):
            return text if text.endswith("\n") else text + "\n"
        whole = closed("".join(get_log(pid=pids[0])))
        outputs = {"alpha": "alpha line 0\nalpha line 1\nalpha line 2\n",
                   "beta": "beta line 0\nbeta line 1\n", "gamma": "gamma line 0\n"}
        ran = sorted(outputs, key=lambda tag: whole.index(outputs[tag]))
        assert whole == "".join(outputs[tag] for tag in ran)
        starts = [by_tag[tag]["start_time_ms"] for tag in ran]
        assert starts == sorted(starts)
        assert "shoal-task" not in whole
        assert closed("".join(get_log(pid=pids[0], tail=1))) == \
            outputs[ran[-1]].splitlines(True)[-1]


def test_an_actors_output_and_follow(shoal_cluster, tmp_path):
    s = Speaker.remote()
    pid = shoal.get(s.speak.remote("hello"))
    (actor,) = list_actors(filters=[("class_name", "=", "Speaker")])
    assert "".join(get_log(actor_id=actor["actor_id"])) == "speaker says hello\n"
    gate = str(tmp_path / "gate")
    call = s.speak_until.remote(gate, "now")
    followed: list = []
    done = threading.Event()

    def follow():
        for chunk in get_log(pid=pid, follow=True, poll_interval_s=0.05):
            followed.append(chunk)
            if "then now" in "".join(followed):
                break
        done.set()
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    wait_for(lambda: "first now" in "".join(followed), timeout=30, what="the first line")
    touch(gate)
    shoal.get(call, timeout=30)
    assert done.wait(30)
    assert "".join(followed) == "speaker says hello\nfirst now\nthen now\n"
    t.join(10)


def test_follow_ends_when_the_worker_exits(shoal_cluster):
    s = Speaker.remote()
    pid = shoal.get(s.speak.remote("bye"))
    shoal.kill(s)
    wait_for(lambda: not any(w["pid"] == pid and w["is_alive"]
                             for w in list_workers(limit=None)), timeout=30,
             what="the actor's worker to exit")
    assert "".join(get_log(pid=pid, follow=True)) == "speaker says bye\n"


def test_bad_log_requests_say_what_is_wrong(shoal_cluster):
    with pytest.raises(ValueError, match="exactly one"):
        list(get_log())
    with pytest.raises(ValueError, match="exactly one"):
        list(get_log(pid=1, task_id="ab"))
    with pytest.raises(ValueError, match="no worker with pid"):
        list(get_log(pid=999999999))
    with pytest.raises(ValueError, match="no task"):
        list(get_log(task_id="00" * 12))
    with pytest.raises(ValueError, match="no actor"):
        list(get_log(actor_id="00" * 12))
    with pytest.raises(ValueError, match="tail"):
        list(get_log(pid=1, tail=-2))
