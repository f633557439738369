import shoal
import shoal.exceptions


def test_all_names_exist():
    for name in shoal.__all__:
        assert hasattr(shoal, name), name


def test_public_surface_is_what_all_says():
    public = {n for n in dir(shoal) if not n.startswith("_")}
    modules = {"api", "config", "core", "node", "object_ref", "options", "remote_function",
               "runtime_context", "scheduler", "serialization", "object_store", "transport",
               "worker", "cluster", "cli", "demo", "runtime_env", "scratch"}
    # Libraries are subpackages a user imports by name (``import shoal.train``);
    # once any test has imported one it is an attribute of shoal too.
    libraries = {"collective", "train", "dashboard"}
    assert public - modules - libraries - set(shoal.__all__) == set()


def test_ray_exception_aliases():
    assert shoal.exceptions.RayTaskError is shoal.exceptions.TaskError
    assert issubclass(shoal.exceptions.GetTimeoutError, TimeoutError)


def test_task_error_is_an_instance_of_the_cause_class():
    err = shoal.exceptions.TaskError("f", "tb", KeyError("k")).as_instanceof_cause()
    assert isinstance(err, KeyError) and isinstance(err, shoal.exceptions.TaskError)
    import pickle
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, KeyError)
