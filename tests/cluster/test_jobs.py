"""Jobs: driver programs run on the cluster (shoal job submit|status|logs|stop|list)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.auth import read_token
from shoal.cluster.client import HeadClient

from ..conftest import wait_for


def cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def job_state(job_id):
    with HeadClient(launch.head_address(None), read_token(launch.StateDir().token_path),
                    "cli") as c:
        return c.call("job_status", job_id)


def test_a_job_with_a_working_dir_runs_on_the_cluster(head, tmp_path):
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "helper.py").write_text("def square(x):\n    return x * x\n")
    (wd / "main.py").write_text(
        "import shoal\n"
        "from helper import square\n"
        "shoal.init()\n"
        "f = shoal.remote(square)\n"
        "print('squares', shoal.get([f.remote(i) for i in range(5)]))\n")
    out = cli("job", "submit", "--working-dir", str(wd), "--", "python", "main.py")
    assert out.returncode == 0, out.stderr
    assert "squares [0, 1, 4, 9, 16]" in out.stdout
    assert "succeeded" in out.stderr
    listed = cli("job", "list")
    assert "SUCCEEDED" in listed.stdout and "python main.py" in listed.stdout


def test_a_jobs_runtime_env_json_reaches_its_driver_tasks_and_actors(head, tmp_path):
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "main.py").write_text(
        "import os, shoal\n"
        "shoal.init(runtime_env={'env_vars': {'MINE': 'init'}})\n"
        "@shoal.remote\n"
        "def f():\n"
        "    return os.environ.get('JOB_VAR'), os.environ.get('MINE')\n"
        "@shoal.remote(num_cpus=0)\n"
        "class A:\n"
        "    def env(self):\n"
        "        return os.environ.get('JOB_VAR')\n"
        "print('env', os.environ.get('JOB_VAR'), shoal.get(f.remote()),\n"
        "      shoal.get(A.remote().env.remote()))\n")
    renv = '{"env_vars": {"JOB_VAR": "job", "MINE": "job"}, "working_dir": "%s"}' % wd
    out = cli("job", "submit", "--runtime-env-json", renv, "--", "python", "main.py")
    assert out.returncode == 0, out.stderr
    assert "env job ('job', 'init') job" in out.stdout      # init's own env_vars win


@pytest.mark.parametrize("args, message", [
    (["--runtime-env-json", "{env_vars"], "--runtime-env-json is not valid JSON"),
    (["--runtime-env-json", '{"env_vars": {"A": 1}}'],
     r"--runtime-env-json: runtime_env env_vars must map names \(str\) to values \(str\)"),
    (["--runtime-env-json", '{"working_dir": "."}', "--working-dir", "."],
     "the working directory is given twice"),
])
def test_a_bad_runtime_env_json_is_refused_before_anything_runs(head, args, message):
    import re
    out = cli("job", "submit", *args, "--", "python", "-c", "print('ran')")
    assert out.returncode != 0 and re.search(message, out.stderr), out.stderr
    assert "ran" not in out.stdout and "python -c" not in cli("job", "list").stdout


def test_a_failing_job_reports_its_exit_code(head):
    out = cli("job", "submit", "--", sys.executable, "-c",
              "import sys; print('bye'); sys.exit(3)")
    assert out.returncode == 1
    assert "bye" in out.stdout and "exited with code 3" in out.stderr


def test_stop_a_running_job_and_read_its_logs(head):
    out = cli("job", "submit", "--no-wait", "--", sys.executable, "-c",
              "import time; print('started', flush=True); time.sleep(120)")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    wait_for(lambda: "started" in cli("job", "logs", job_id).stdout, timeout=30)
    assert "RUNNING" in cli("job", "status", job_id).stdout
    assert cli("job", "stop", job_id).returncode == 0
    wait_for(lambda: job_state(job_id)["state"] == "STOPPED", timeout=20)
    assert "STOPPED" in cli("job", "status", job_id).stdout


def test_unknown_jobs_and_empty_commands_are_clear_errors(head):
    out = cli("job", "status", "job_nope")
    assert out.returncode == 1 and "no job 'job_nope'" in out.stderr
    out = cli("job", "submit", "--")
    assert out.returncode == 1 and "give the command" in out.stderr


def test_a_working_dir_archive_cannot_write_outside_its_directory(head, cluster_env, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with HeadClient(head["address"], read_token(cluster_env.token_path), "cli") as c:
        with pytest.raises(Exception, match="outside|path"):
            c.call("job_submit", "true", buf.getvalue(), {})
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("escaped.txt"))


def test_only_the_cli_may_submit_jobs(head, cluster_env):
    with HeadClient(head["address"], read_token(cluster_env.token_path), "node") as c:
        with pytest.raises(PermissionError):
            c.call("job_submit", "true", None, {})


def test_stopping_the_cluster_ends_running_jobs(head):
    out = cli("job", "submit", "--no-wait", "--", sys.executable, "-c",
              "import time; print('up', flush=True); time.sleep(120)")
    job_id = out.stdout.strip()
    wait_for(lambda: "up" in cli("job", "logs", job_id).stdout, timeout=30)
    jobs = [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "time.sleep(120)" in " ".join(p.info["cmdline"])]
    assert jobs
    launch.stop()
    wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in jobs),
             timeout=20, what="the job's process to end with the head")


@pytest.mark.timeout(90)
def test_tasks_on_another_node_import_the_jobs_working_dir(head, tmp_path):
    """The working directory reaches the node that runs the job's tasks:
    they import its modules at run time and read its files (their current
    directory), nested tasks and actors too. So do the job's env_vars and a
    task's own, merged."""
    launch.start_node(head["address"], num_cpus=1, resources={"edge": 1})
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "helper.py").write_text("VALUE = 41\n")
    (wd / "data.txt").write_text("from the working dir\n")
    (wd / "main.py").write_text(
        "import os, shoal\n"
        "shoal.init(runtime_env={'env_vars': {'JOB_VAR': 'job', 'MINE': 'job'}})\n"
        "@shoal.remote(resources={'edge': 0.5})\n"
        "def f():\n"
        "    import helper\n"
        "    return helper.VALUE + 1, open('data.txt').read().strip()\n"
        "@shoal.remote(resources={'edge': 0.5}, runtime_env={'env_vars': {'MINE': 'task'}})\n"
        "def g():\n"
        "    import helper\n"
        "    return helper.VALUE, os.environ['JOB_VAR'], os.environ['MINE']\n"
        "@shoal.remote(resources={'edge': 0.5})\n"
        "def outer():\n"
        "    return shoal.get(f.remote())\n"
        "@shoal.remote(resources={'edge': 0.5})\n"
        "class A:\n"
        "    def value(self):\n"
        "        import helper\n"
        "        return helper.VALUE\n"
        "print('results', shoal.get(f.remote()), shoal.get(outer.remote()),\n"
        "      shoal.get(A.remote().value.remote()), shoal.get(g.remote()))\n")
    out = cli("job", "submit", "--working-dir", str(wd), "--", "python", "main.py")
    assert out.returncode == 0, out.stderr
    expected = (42, "from the working dir")
    assert f"results {expected} {expected} 41 (41, 'job', 'task')" in out.stdout
