"""transport/framing.py: frames arrive whole however the stream splits them."""
from __future__ import annotations

import socket
import struct

import pytest

from shoal.transport import framing
from shoal.transport.framing import Connection, ConnectionClosed, encode


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        yield a, Connection(b)
    finally:
        a.close()
        b.close()


def read_all(conn: Connection, want: int) -> list:
    got = []
    for _ in range(10_000):
        got += conn.read_messages()
        if len(got) >= want:
            return got
    raise AssertionError(f"read {len(got)} of {want} messages")


def test_many_messages_in_one_read_come_back_in_order(pair):
    a, conn = pair
    msgs = [("m", i, b"x" * i) for i in range(100)]
    a.sendall(b"".join(encode(m) for m in msgs))
    assert read_all(conn, 100) == msgs


def test_a_frame_split_anywhere_is_joined(pair):
    a, conn = pair
    msgs = [("first", 1), ("second", b"y" * 300), ("third", None)]
    data = b"".join(encode(m) for m in msgs)
    got = []
    for i in range(len(data)):            # one byte at a time: every split point
        a.sendall(data[i:i + 1])
        got += conn.read_messages()
    assert got == msgs and conn.read_messages() == []


def test_a_message_larger_than_the_read_buffer_arrives_whole(pair):
    a, conn = pair
    big = ("big", bytes(range(256)) * (3 * framing._RECV_CHUNK // 256 + 7))
    a.setblocking(False)
    data, sent, got = encode(big) + encode(("after",)), 0, []
    while len(got) < 2:
        try:
            sent += a.send(data[sent:sent + 65536])
        except BlockingIOError:
            pass
        got += conn.read_messages()
    assert got == [big, ("after",)]


def test_a_closed_peer_or_an_oversized_frame_is_connection_closed(pair):
    a, conn = pair
    a.sendall(struct.pack("<I", framing.MAX_FRAME + 1) + b"x")
    with pytest.raises(ConnectionClosed, match="oversized frame"):
        read_all(conn, 1)
    a2, b2 = socket.socketpair()
    try:
        a2.close()
        with pytest.raises(ConnectionClosed, match="peer closed"):
            Connection(b2).read_messages()
    finally:
        b2.close()


def test_a_read_nested_in_another_on_the_same_thread_gets_its_own_buffer():
    outer = framing._take_buffer()
    inner = framing._take_buffer()
    try:
        assert outer.obj is not inner.obj
    finally:
        framing._give_back(inner)
        framing._give_back(outer)
    again = framing._take_buffer()
    framing._give_back(again)
    assert again.obj is outer.obj
