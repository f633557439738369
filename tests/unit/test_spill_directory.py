"""SpillDirectory: one file per spilled object in a directory of the node's
own, byte-exact round trips, honest accounting, and a clean removal."""
from __future__ import annotations

import os
import stat

import pytest

from shoal.object_store.spill import SpillDirectory

OID = bytes(range(16))


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 256 for i in range(n))


@pytest.fixture
def spill(tmp_path):
    d = SpillDirectory(str(tmp_path / "root"))
    yield d
    d.close()


def test_the_directory_is_a_fresh_one_inside_the_root_named_for_the_process(tmp_path):
    root = tmp_path / "not" / "there" / "yet"
    a, b = SpillDirectory(str(root)), SpillDirectory(str(root))
    try:
        assert a.path != b.path
        for d in (a, b):
            assert os.path.dirname(d.path) == str(root)
            assert os.path.basename(d.path).startswith(f"shoal-spill-{os.getpid()}-")
            assert os.listdir(d.path) == []
    finally:
        a.close()
        b.close()
    assert os.listdir(root) == []


def test_an_empty_root_means_the_system_temporary_directory():
    import tempfile
    d = SpillDirectory("")
    try:
        assert os.path.dirname(d.path) == tempfile.gettempdir()
    finally:
        d.close()
    assert not os.path.exists(d.path)


def test_write_then_read_gives_back_every_byte(spill):
    data = payload(300_001)
    path = spill.write(OID, memoryview(data))
    assert path == os.path.join(spill.path, OID.hex())
    assert os.path.getsize(path) == len(data)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600   # objects are private to the user

    into = bytearray(len(data))
    spill.read(path, memoryview(into))
    assert bytes(into) == data


def test_the_counters_follow_writes_reads_and_deletes(spill):
    a = spill.write(b"a" * 16, memoryview(payload(1000)))
    b = spill.write(b"b" * 16, memoryview(payload(500, 1)))
    assert (spill.bytes, spill.spilled_total, spill.restored_total) == (1500, 1500, 0)
    spill.read(a, memoryview(bytearray(1000)))
    assert spill.restored_total == 1000
    spill.delete(a, 1000)
    assert not os.path.exists(a)
    assert (spill.bytes, spill.spilled_total) == (500, 1500)
    spill.delete(b, 500)
    assert spill.bytes == 0 and os.listdir(spill.path) == []


def test_reading_a_truncated_file_raises_oserror_and_counts_nothing(spill):
    path = spill.write(OID, memoryview(payload(4096)))
    os.truncate(path, 1000)
    with pytest.raises(OSError, match="shorter"):
        spill.read(path, memoryview(bytearray(4096)))
    assert spill.restored_total == 0


def test_reading_a_missing_file_raises_oserror(spill):
    path = spill.write(OID, memoryview(payload(100)))
    os.unlink(path)
    with pytest.raises(OSError):
        spill.read(path, memoryview(bytearray(100)))


def test_deleting_a_file_that_is_already_gone_is_harmless(spill):
    path = spill.write(OID, memoryview(payload(100)))
    os.unlink(path)
    spill.delete(path, 100)
    assert spill.bytes == 0


def test_writing_the_same_object_again_replaces_its_file(spill):
    first = spill.write(OID, memoryview(payload(2000)))
    spill.delete(first, 2000)
    second = spill.write(OID, memoryview(payload(100, 7)))
    assert second == first and os.path.getsize(second) == 100
    into = bytearray(100)
    spill.read(second, memoryview(into))
    assert bytes(into) == payload(100, 7)


def test_close_removes_the_directory_and_its_files(tmp_path):
    d = SpillDirectory(str(tmp_path))
    d.write(OID, memoryview(payload(100)))
    d.close()
    assert not os.path.exists(d.path)
    d.close()       # twice is harmless
