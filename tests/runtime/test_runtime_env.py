"""runtime_env={"working_dir": ...} on one machine: tasks, nested tasks and
actors import the directory's modules and read its files; bad input is a
clear error that leaves shoal uninitialised."""
from __future__ import annotations

import pytest

import shoal


@pytest.fixture
def project(tmp_path):
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "wd_helper_mod.py").write_text("VALUE = 41\n\ndef bump(x):\n    return x + 1\n")
    (wd / "data.txt").write_text("hello from the working dir\n")
    (wd / "__pycache__").mkdir()
    (wd / "__pycache__" / "junk.pyc").write_bytes(b"\0" * 10)
    return wd


@pytest.fixture
def shut():
    yield
    shoal.shutdown()


@pytest.mark.timeout(60)
def test_tasks_and_actors_use_the_working_dir(project, shut):
    shoal.init(num_cpus=2, runtime_env={"working_dir": str(project)})

    @shoal.remote
    def f():
        import os

        import wd_helper_mod
        return (wd_helper_mod.bump(wd_helper_mod.VALUE), open("data.txt").read().strip(),
                os.path.exists("__pycache__/junk.pyc"))

    @shoal.remote
    def outer():
        return shoal.get(f.remote())

    @shoal.remote
    class A:
        def value(self):
            import wd_helper_mod
            return wd_helper_mod.VALUE

    expected = (42, "hello from the working dir", False)
    assert shoal.get(f.remote(), timeout=30) == expected
    assert shoal.get(outer.remote(), timeout=30) == expected
    assert shoal.get(A.remote().value.remote(), timeout=30) == 41


@pytest.mark.timeout(60)
def test_a_working_dir_that_is_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        shoal.init(num_cpus=1, runtime_env={"working_dir": str(tmp_path / "nope")})
    assert not shoal.is_initialized()


@pytest.mark.timeout(60)
def test_other_runtime_env_keys_warn_that_they_are_ignored(project, shut):
    with pytest.warns(UserWarning, match="supports working_dir and env_vars only; ignored: pip"):
        shoal.init(num_cpus=1, runtime_env={"working_dir": str(project), "pip": ["x"]})


def env_of(*names):
    import os
    return {n: os.environ.get(n) for n in names}


@pytest.mark.timeout(60)
def test_env_vars_of_the_job_tasks_and_actors_are_merged_inherited_and_put_back(
        monkeypatch, shut):
    """As in Ray: a task's env_vars are merged over the job's (the task's
    win), what a task submits inherits them, an actor keeps its own for its
    life, and a task's variables are gone (or back to what they were) for
    the next task on the same worker. The driver's environment is untouched."""
    names = ("RENV_JOB", "RENV_BOTH", "RENV_TASK", "RENV_PRE", "RENV_ACTOR")
    monkeypatch.setenv("RENV_PRE", "from the worker's start")
    shoal.init(num_cpus=1, runtime_env={"env_vars": {"RENV_JOB": "job", "RENV_BOTH": "job"}})
    env = shoal.remote(env_of)
    task_env = {"RENV_BOTH": "task", "RENV_TASK": "task", "RENV_PRE": "task"}

    @shoal.remote(runtime_env={"env_vars": task_env})
    def outer():
        return env_of(*names), shoal.get(env.remote(*names))

    @shoal.remote(num_cpus=0, runtime_env={"env_vars": {"RENV_ACTOR": "actor"}})
    class A:
        def env(self):
            return env_of(*names)

        def nested(self):
            return shoal.get(env.remote(*names))

    plain = {"RENV_JOB": "job", "RENV_BOTH": "job", "RENV_TASK": None,
             "RENV_PRE": "from the worker's start", "RENV_ACTOR": None}
    merged = {**plain, **task_env}
    assert shoal.get(outer.remote(), timeout=30) == (merged, merged)
    assert shoal.get(env.remote(*names), timeout=30) == plain          # put back
    assert shoal.get(env.options(runtime_env={"env_vars": {"RENV_TASK": "t2"}}).remote(*names),
                     timeout=30) == {**plain, "RENV_TASK": "t2"}
    a = A.remote()
    with_actor = {**plain, "RENV_ACTOR": "actor"}
    assert shoal.get(a.env.remote(), timeout=30) == with_actor
    assert shoal.get(a.nested.remote(), timeout=30) == with_actor     # its tasks inherit
    assert shoal.get(a.env.remote(), timeout=30) == with_actor        # for its life
    assert env_of(*names) == {n: None for n in names} | {"RENV_PRE": "from the worker's start"}


@pytest.mark.timeout(60)
def test_a_task_or_actor_can_have_a_working_dir_of_its_own(project, shut):
    shoal.init(num_cpus=1)

    @shoal.remote(runtime_env={"working_dir": str(project)})
    def f():
        import wd_helper_mod
        return wd_helper_mod.bump(wd_helper_mod.VALUE)

    @shoal.remote(num_cpus=0)
    class A:
        def value(self):
            import wd_helper_mod
            return wd_helper_mod.VALUE

    assert shoal.get(f.remote(), timeout=30) == 42
    actor = A.options(runtime_env={"working_dir": str(project)}).remote()
    assert shoal.get(actor.value.remote(), timeout=30) == 41


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runtime_env, message", [
    ({"env_vars": {"A": 1}},
     r"runtime_env env_vars must map names \(str\) to values \(str\), got \{'A': 1\}"),
    ({"env_vars": ["A=1"]}, r"runtime_env env_vars must map names"),
    ("A=1", "runtime_env must be a dict, got str"),
    ({"env_vars": {"A=B": "1"}}, "runtime_env env_vars has 'A=B': '1', which cannot be"),
    ({"env_vars": {"": "1"}}, "runtime_env env_vars has '': '1', which cannot be"),
    ({"working_dir": "/nonexistent/dir"},
     "runtime_env working_dir '/nonexistent/dir' is not a directory"),
])
def test_a_malformed_runtime_env_is_a_clear_error_wherever_it_is_given(runtime_env, message):
    def f():
        return 1

    with pytest.raises(ValueError, match=r"remote function .*f: " + message):
        shoal.remote(runtime_env=runtime_env)(f)
    with pytest.raises(ValueError, match=message):
        shoal.remote(f).options(runtime_env=runtime_env)
    with pytest.raises(ValueError, match=message):
        shoal.remote(type("A", (), {})).options(runtime_env=runtime_env)
    with pytest.raises(ValueError, match=r"shoal.init\(\): " + message):
        shoal.init(num_cpus=1, runtime_env=runtime_env)
    assert not shoal.is_initialized()


@pytest.mark.timeout(60)
def test_runtime_env_fields_shoal_does_not_support_are_named_in_a_warning():
    with pytest.warns(UserWarning, match="supports working_dir and env_vars only; ignored: "
                                         "conda, pip"):
        shoal.remote(runtime_env={"pip": ["x"], "conda": "env", "env_vars": {}})(lambda: 1)


@pytest.mark.timeout(60)
def test_the_runtime_context_says_which_runtime_env_the_code_runs_with(project, shut):
    shoal.init(num_cpus=1, runtime_env={"env_vars": {"A": "job"}})
    assert shoal.get_runtime_context().runtime_env == {"env_vars": {"A": "job"}}

    @shoal.remote(runtime_env={"working_dir": str(project), "env_vars": {"B": "task"}})
    def f():
        import os
        renv = shoal.get_runtime_context().runtime_env
        return renv, os.path.samefile(renv["working_dir"], os.getcwd()), \
            sorted(os.listdir(renv["working_dir"]))

    renv, is_cwd, files = shoal.get(f.remote(), timeout=30)
    assert renv["env_vars"] == {"A": "job", "B": "task"} and is_cwd
    assert files == ["data.txt", "wd_helper_mod.py"]
    assert '"env_vars": {"A": "job"}' in shoal.get_runtime_context().get_runtime_env_string()
