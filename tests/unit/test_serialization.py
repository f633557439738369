import numpy as np
import pytest

from shoal.exceptions import SerializationError
from shoal.serialization import deserialize, pack_inline, serialize


def test_large_buffers_go_out_of_band_and_come_back_zero_copy():
    arr = np.arange(100_000, dtype=np.float64)
    s = serialize({"a": arr})
    assert len(s.buffers) == 1 and len(s.header) < 1000
    data, layout = pack_inline(s)
    out = deserialize(memoryview(data), layout)["a"]
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.owndata


def test_small_values_stay_in_band():
    s = serialize([1, "two", 3.0])
    assert s.buffers == []
    data, layout = pack_inline(s)
    assert layout is None and deserialize(data, None) == [1, "two", 3.0]


def test_unpicklable_value_names_its_type():
    import threading
    with pytest.raises(SerializationError, match="lock"):
        serialize(threading.Lock())
