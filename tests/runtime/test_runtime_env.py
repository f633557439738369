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
    with pytest.warns(UserWarning, match="supports working_dir only; ignored: pip"):
        shoal.init(num_cpus=1, runtime_env={"working_dir": str(project), "pip": ["x"]})
