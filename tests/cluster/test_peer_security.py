"""A node's peer port (other nodes' links and object fetches) refuses what
the head refuses: a wrong token, garbage, a driver's handshake, an
oversized or unknown first frame. Each refusal is logged with the peer's
address, and the node carries on: it still answers a fetch and stays ALIVE.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import socket

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.auth import read_token

from ..conftest import wait_for
from .test_security import (HANDSHAKE_TIMEOUT_S, SOCKET_TIMEOUT_S, authenticate,
                            closed_by_peer, handshake_reply, local_addr, read_hello,
                            recv_frame, send_frame)


@pytest.fixture
def node(cluster_env, monkeypatch, request):
    """The `head` fixture's node: its peer address, pid, token and log."""
    monkeypatch.setenv("SHOAL_HANDSHAKE_TIMEOUT_S", str(HANDSHAKE_TIMEOUT_S))
    head = request.getfixturevalue("head")
    row = wait_for(lambda: next((n for n in launch.status()["nodes"]
                                 if n.get("peer_address")), None), timeout=10,
                   what="the node's peer address in the head's table")
    logs = [p for p in glob.glob(os.path.join(cluster_env.path, "node-*.log"))]
    assert len(logs) == 1
    return {"address": tuple(row["peer_address"]), "pid": head["node_pid"],
            "token": read_token(cluster_env.token_path), "log": logs[0]}


def connect(node) -> socket.socket:
    sock = socket.create_connection(node["address"], timeout=SOCKET_TIMEOUT_S)
    sock.settimeout(SOCKET_TIMEOUT_S)
    return sock


def refused(node, sock, reason: str) -> None:
    """The node closed ``sock``, logged its address with ``reason``, and is fine."""
    peer = local_addr(sock)
    assert closed_by_peer(sock)
    sock.close()
    names_peer = re.compile(rf"\b{re.escape(peer)}(?!\d)")

    def logged():
        with open(node["log"], errors="replace") as f:
            return next((line for line in f if names_peer.search(line)
                         and re.search(reason, line)), None)
    wait_for(logged, timeout=10, what=f"the node to log {peer} with /{reason}/")
    node_serves(node)


def node_serves(node) -> None:
    """The node process lives, is ALIVE at the head, answers a fetch, and
    never wrote the token into its log."""
    assert psutil.Process(node["pid"]).status() != psutil.STATUS_ZOMBIE
    assert any(n["state"] == "ALIVE" and n["pid"] == node["pid"]
               for n in launch.status()["nodes"])
    with connect(node) as sock:
        authenticate(sock, node["token"], b"N")
        send_frame(sock, pickle.dumps(("fetch",)))
        send_frame(sock, pickle.dumps((os.urandom(16),)))
        ok, why = recv_frame(sock)
        assert ok is False and "not held by node" in why
    with open(node["log"], errors="replace") as f:
        text = f.read()
    assert node["token"] not in text and "Traceback" not in text


@pytest.mark.timeout(60)
def test_a_wrong_token_is_refused(node):
    sock = connect(node)
    reply, _ = handshake_reply("not-the-token", read_hello(sock), b"N")
    sock.sendall(reply)
    refused(node, sock, "refused a peer connection.*token")


@pytest.mark.timeout(60)
def test_garbage_is_refused(node):
    sock = connect(node)
    read_hello(sock)
    sock.sendall(os.urandom(200))
    refused(node, sock, "refused a peer connection")


@pytest.mark.timeout(60)
def test_a_driver_handshake_is_refused_on_the_peer_port(node):
    sock = connect(node)
    reply, _ = handshake_reply(node["token"], read_hello(sock), b"D")
    sock.sendall(reply)
    refused(node, sock, "refused a peer connection.*driver")


@pytest.mark.timeout(60)
def test_silence_is_dropped_after_the_handshake_timeout(node):
    sock = connect(node)
    refused(node, sock, "refused a peer connection")


@pytest.mark.timeout(60)
def test_a_1_gb_first_frame_is_refused_without_reading_it(node):
    sock = connect(node)
    authenticate(sock, node["token"], b"N")
    sock.sendall((1 << 30).to_bytes(4, "little"))
    refused(node, sock, "refused a peer connection.*frame")


@pytest.mark.timeout(60)
def test_an_unknown_purpose_is_refused(node):
    sock = connect(node)
    authenticate(sock, node["token"], b"N")
    send_frame(sock, pickle.dumps(("shell", "rm -rf /")))
    refused(node, sock, "refused a peer connection.*unknown purpose")


@pytest.mark.timeout(60)
def test_a_link_request_with_a_bad_address_is_refused(node):
    sock = connect(node)
    authenticate(sock, node["token"], b"N")
    send_frame(sock, pickle.dumps(("link", os.urandom(16), "nowhere")))
    refused(node, sock, "refused a peer connection.*bad address")
