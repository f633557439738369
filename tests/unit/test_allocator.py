from shoal.object_store.allocator import Allocator


def test_alloc_aligns_and_reuses_the_lowest_freed_block():
    a = Allocator(1 << 20)
    x = a.alloc(100)
    y = a.alloc(100)
    assert x == 0 and y == 128
    a.free(x)
    assert a.alloc(10) == 0


def test_free_coalesces_neighbours():
    a = Allocator(1024)
    blocks = [a.alloc(256) for _ in range(4)]
    assert a.alloc(1) is None
    for b in (blocks[1], blocks[3], blocks[2], blocks[0]):
        a.free(b)
    assert a.largest_free() == 1024 and a.used_bytes == 0
    assert a.alloc(1024) == 0


def test_alloc_returns_none_when_nothing_fits():
    a = Allocator(512)
    a.alloc(300)
    assert a.alloc(300) is None
