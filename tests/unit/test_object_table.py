from shoal.object_store.table import ObjectTable
from shoal.transport.messages import INLINE

VALUE = (INLINE, (b"x", None), ())


def test_object_lives_while_referenced_or_pinned():
    t = ObjectTable()
    freed = []
    t.add_ref(b"a")
    t.set_value(b"a", VALUE)
    t.pin(b"a")
    t.remove_ref(b"a", 1, freed)
    assert not freed and t.get(b"a") is not None
    t.unpin(b"a", freed)
    assert [oid for oid, _ in freed] == [b"a"] and t.get(b"a") is None


def test_value_for_an_unwanted_object_is_reported_for_discard():
    t = ObjectTable()
    freed = []
    t.add_ref(b"a")
    t.remove_ref(b"a", 1, freed)
    entry, waiters = t.set_value(b"a", VALUE)
    assert entry is None and waiters is None


def test_waiters_run_once_when_the_value_arrives():
    t = ObjectTable()
    calls = []
    t.add_ref(b"a")
    assert t.add_waiter(b"a", lambda oid, e: calls.append(oid))
    entry, waiters = t.set_value(b"a", VALUE)
    for cb in waiters:
        cb(b"a", entry)
    assert calls == [b"a"]
    assert not t.add_waiter(b"a", lambda oid, e: None)   # already there


def test_first_value_stands_when_delivered_twice():
    t = ObjectTable()
    t.add_ref(b"a")
    t.set_value(b"a", VALUE)
    other = (INLINE, (b"y", None), ())
    entry, _ = t.set_value(b"a", other)
    assert entry.value is VALUE
