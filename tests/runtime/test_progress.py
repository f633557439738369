"""Progress bars that tasks and actors advance and the driver draws, one
per name (shoal.util.tqdm, node/progress.py); and `shoal demo`, which
uses them."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import shoal
from shoal.node.progress import Progress, driver_progress
from shoal.util.tqdm import tqdm
from tests.conftest import wait_for


@shoal.remote
def chunk(n):
    from shoal.util.tqdm import tqdm
    total = 0
    for i in tqdm(range(n), desc="chunks", flush_interval_s=0.0):
        total += i
    return total


@shoal.remote
class Loader:
    def load(self, n):
        from shoal.util.tqdm import tqdm
        bar = tqdm(total=n, desc="loading")
        for _ in range(n):
            bar.update(1)
        bar.close()
        return n


def bar_state(name):
    bar = driver_progress().bars.get(name)
    return bar.totals() if bar is not None else None


def test_tasks_on_several_workers_advance_one_bar(shoal_cluster):
    assert shoal.get([chunk.remote(n) for n in (5, 7, 9, 11)]) == \
        [sum(range(n)) for n in (5, 7, 9, 11)]
    wait_for(lambda: bar_state("chunks") == (32, 32, True), timeout=30,
             what="the driver's chunks bar to sum every task's")
    loaders = [Loader.remote() for _ in range(2)]
    assert shoal.get([l.load.remote(50) for l in loaders]) == [50, 50]
    wait_for(lambda: bar_state("loading") == (100, 100, True), timeout=30,
             what="the loading bar to sum both actors'")


def test_a_bar_in_the_driver_and_the_lines_it_leaves(shoal_cluster, capfd):
    with tqdm(total=3, desc="here") as bar:
        for _ in range(3):
            bar.update()
    assert bar_state("here") == (3, 3, True)
    shoal.get(chunk.remote(4))
    wait_for(lambda: bar_state("chunks") == (4, 4, True), timeout=30, what="the task's bar")
    shoal.shutdown()                             # not a terminal: the last lines stay
    err = capfd.readouterr().err
    assert re.search(r"here: 100%\|█+\| 3/3", err), err
    assert re.search(r"chunks: 100%\|█+\| 4/4", err), err
    assert "shoal-progress" not in err           # the reports themselves are not printed
    shoal.init(num_cpus=2)                       # (the fixture shuts it down)


def test_bars_redraw_in_place_on_a_terminal():
    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass
    term = Terminal()
    p = Progress(stream=term)
    p.report("a", "download", 1, 4, False)
    p.report("b", "download", 2, 4, False)
    p.report("a", "download", 4, 4, True)
    p.report("b", "download", 4, 4, True)
    p.finish()
    assert "download: 100%" in term.text and "8/8" in term.text
    assert "\x1b[1A\x1b[2K" in term.text          # the bar was rewritten, not appended
    assert p.ticker is None                       # its thread was joined


def test_bad_bars_say_what_is_wrong():
    with pytest.raises(ValueError, match="total"):
        tqdm(total=-1)
    bar = tqdm(total=2, desc="x")
    with pytest.raises(TypeError, match="number"):
        bar.update("one")
    with pytest.raises(TypeError, match="no iterable"):
        iter(bar).__next__()
    bar.close()
    driver_progress().finish()


def test_shoal_demo_runs_and_draws_its_bars(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "demo", "--samples", "400000"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"pi ~ 3\.1\d+ from 400,000 samples", proc.stdout), proc.stdout
    assert "<- best" in proc.stdout and "column means" in proc.stdout
    assert re.search(r"sampling: 100%\|█+\| 400/400", proc.stderr), proc.stderr
    assert re.search(r"training: 100%\|█+\| 240/240", proc.stderr), proc.stderr
