from shoal.scheduler.resources import NodeResources


def test_fractional_gpus_pack_onto_one_device():
    r = NodeResources({"CPU": 4, "GPU": 2})
    a = r.try_acquire(r.quantize({"GPU": 0.5}))
    b = r.try_acquire(r.quantize({"GPU": 0.5}))
    assert a.gpu_ids == b.gpu_ids
    c = r.try_acquire(r.quantize({"GPU": 1}))
    assert c.gpu_ids != a.gpu_ids
    assert r.try_acquire(r.quantize({"GPU": 0.5})) is None
    r.release(a)
    assert r.try_acquire(r.quantize({"GPU": 0.5})).gpu_ids == b.gpu_ids


def test_whole_gpus_need_free_devices():
    r = NodeResources({"GPU": 2})
    r.try_acquire(r.quantize({"GPU": 0.25}))
    assert r.try_acquire(r.quantize({"GPU": 2})) is None
    assert r.try_acquire(r.quantize({"GPU": 1})) is not None


def test_fractions_add_up_exactly():
    r = NodeResources({"CPU": 1})
    got = [r.try_acquire(r.quantize({"CPU": 0.1})) for _ in range(10)]
    assert all(got) and r.try_acquire(r.quantize({"CPU": 0.1})) is None
    for a in got:
        r.release(a)
    assert r.available["CPU"] == r.total["CPU"]


def test_infeasible_reason_names_the_numbers():
    r = NodeResources({"CPU": 2})
    assert "CPU=4" in r.infeasible_reason(r.quantize({"CPU": 4}))
    assert "edge" in r.infeasible_reason(r.quantize({"edge": 1}))
    assert r.infeasible_reason(r.quantize({"CPU": 2})) is None
