"""The head refuses bad peers and never crashes: wrong or missing tokens,
garbage, truncated and replayed handshakes, oversized and malformed frames,
a node asking to shut the head down. After each, the head still answers
``status`` and its log names the peer's address with a reason.

Also the client side: a fake head that does not know the token gets nothing
from ``HeadClient`` but the handshake.

Every socket has a timeout and every wait a deadline; the handshake timeout
is 1 s so that silent peers cost one second, not five.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import random
import re
import secrets
import socket
import struct
import threading

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.auth import (HELLO_SIZE, MAC, MAGIC, NONCE, REPLY_SIZE, AuthError,
                                client_handshake, read_token)
from shoal.cluster.client import HeadClient, parse_address

from ..conftest import wait_for

HANDSHAKE_TIMEOUT_S = 1
SOCKET_TIMEOUT_S = 5.0
HEADER = struct.Struct("<I")


@pytest.fixture
def secure_head(cluster_env, monkeypatch, request):
    """The `head` fixture's head (with its 1-CPU node) and its token, started
    with a 1 s handshake timeout: the variable must be set before the head
    process starts, so `head` is requested only after setting it."""
    monkeypatch.setenv("SHOAL_HANDSHAKE_TIMEOUT_S", str(HANDSHAKE_TIMEOUT_S))
    info = dict(request.getfixturevalue("head"), token=read_token(cluster_env.token_path))
    env = psutil.Process(info["head_pid"]).environ()
    assert env.get("SHOAL_HANDSHAKE_TIMEOUT_S") == str(HANDSHAKE_TIMEOUT_S)
    return info


# ------------------------------------------------------------------ helpers
def client(head, role: str) -> HeadClient:
    return HeadClient(head["address"], head["token"], role, timeout=SOCKET_TIMEOUT_S)


def connect(head) -> socket.socket:
    sock = socket.create_connection(parse_address(head["address"]), timeout=SOCKET_TIMEOUT_S)
    sock.settimeout(SOCKET_TIMEOUT_S)
    return sock


def local_addr(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def recv_exactly(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"the head closed the connection after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def read_hello(sock) -> bytes:
    """The head's hello; its nonce."""
    hello = recv_exactly(sock, HELLO_SIZE)
    assert hello.startswith(MAGIC)
    return hello[len(MAGIC):]


def mac(token: str, *parts: bytes) -> bytes:
    return hmac.new(token.encode(), b"".join(parts), hashlib.sha256).digest()


def handshake_reply(token: str, server_nonce: bytes, role: bytes = b"C",
                    mac_role: bytes | None = None) -> tuple[bytes, bytes]:
    """A client's reply computed by hand (auth.py's layout); (reply, client nonce).
    ``mac_role`` signs a different role than the one sent (a tampered reply)."""
    client_nonce = secrets.token_bytes(NONCE)
    signed = mac(token, b"client", server_nonce, client_nonce, mac_role or role)
    return MAGIC + role + client_nonce + signed, client_nonce


def authenticate(sock, token: str, role: bytes = b"C") -> bytes:
    """Do the handshake by hand, check the head's MAC; the reply bytes sent."""
    server_nonce = read_hello(sock)
    reply, client_nonce = handshake_reply(token, server_nonce, role)
    sock.sendall(reply)
    answer = recv_exactly(sock, MAC)
    assert hmac.compare_digest(answer, mac(token, b"server", client_nonce, server_nonce))
    return reply


def send_frame(sock, payload: bytes) -> None:
    sock.sendall(HEADER.pack(len(payload)) + payload)


def recv_frame(sock):
    (size,) = HEADER.unpack(recv_exactly(sock, 4))
    return pickle.loads(recv_exactly(sock, size))


def closed_by_peer(sock) -> bool:
    """True once the head has closed ``sock`` (EOF or reset); reads and
    discards anything it still sends. Fails on the socket timeout."""
    while True:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True


def head_log(cluster_env) -> str:
    with open(cluster_env.log_path("head"), errors="replace") as f:
        return f.read()


def wait_for_log(cluster_env, peer: str, reason: str, timeout: float = 10) -> str:
    """The head's log line that names ``peer`` (HOST:PORT) and matches the
    regex ``reason``."""
    names_peer = re.compile(rf"\b{re.escape(peer)}(?!\d)")

    def found():
        return next((line for line in head_log(cluster_env).splitlines()
                     if names_peer.search(line) and re.search(reason, line)), None)
    return wait_for(found, timeout=timeout, what=f"the head to log {peer} with /{reason}/")


def assert_head_serves(head, cluster_env) -> None:
    """The head process lives, answers status with itself and its one node,
    and has not written the token into its log."""
    assert psutil.Process(head["head_pid"]).status() != psutil.STATUS_ZOMBIE
    s = launch.status()
    assert s["head"]["pid"] == head["head_pid"]
    assert f"{s['head']['host']}:{s['head']['port']}" == head["address"]
    (node,) = s["nodes"]
    assert node["state"] == "ALIVE" and node["pid"] == head["node_pid"]
    assert node["is_head_node"] and node["resources"]["CPU"] == 1
    assert "Traceback" not in head_log(cluster_env)
    assert head["token"] not in head_log(cluster_env)


def refused(head, cluster_env, sock, reason: str) -> None:
    """The head closed ``sock``, logged its address with ``reason``, and serves on."""
    peer = local_addr(sock)
    assert closed_by_peer(sock)
    sock.close()
    wait_for_log(cluster_env, peer, reason)
    assert_head_serves(head, cluster_env)


# ------------------------------------------------------ handshake refusals
def test_a_handshake_made_with_another_token_is_refused(secure_head, cluster_env):
    with connect(secure_head) as sock:
        with pytest.raises(AuthError, match="refused the handshake"):
            client_handshake(sock, secrets.token_hex(32), "node")
        refused(secure_head, cluster_env, sock, "wrong cluster token")


def test_a_peer_that_sends_nothing_is_dropped_after_the_handshake_timeout(
        secure_head, cluster_env):
    with connect(secure_head) as sock:
        read_hello(sock)
        refused(secure_head, cluster_env, sock, rf"no handshake within {HANDSHAKE_TIMEOUT_S} s")


def test_garbage_instead_of_the_handshake_is_refused(secure_head, cluster_env):
    garbage = random.Random(1).randbytes(100)
    assert not garbage.startswith(MAGIC)
    with connect(secure_head) as sock:
        sock.sendall(garbage)
        refused(secure_head, cluster_env, sock, "not a shoal handshake")


def test_an_http_request_is_refused(secure_head, cluster_env):
    with connect(secure_head) as sock:
        # shorter than a handshake reply: the head waits for the rest, then drops it
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refused(secure_head, cluster_env, sock, "no handshake within")


def test_a_long_http_request_is_refused_without_waiting(secure_head, cluster_env):
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\n"
               b"Accept: */*\r\nConnection: keep-alive\r\n\r\n")
    assert len(request) >= REPLY_SIZE
    with connect(secure_head) as sock:
        sock.sendall(request)
        refused(secure_head, cluster_env, sock, "not a shoal handshake")


def test_a_truncated_handshake_is_refused(secure_head, cluster_env):
    with connect(secure_head) as sock:
        reply, _ = handshake_reply(secure_head["token"], read_hello(sock))
        sock.sendall(reply[:len(reply) // 2])
        sock.shutdown(socket.SHUT_WR)         # "then close": the head sees EOF mid-handshake
        refused(secure_head, cluster_env, sock, "closed during the handshake")


def test_a_replayed_handshake_is_refused(secure_head, cluster_env):
    token = secure_head["token"]
    with connect(secure_head) as sock:                  # a legitimate client, recorded
        first_nonce = read_hello(sock)
        recorded, client_nonce = handshake_reply(token, first_nonce)
        sock.sendall(recorded)
        assert recv_exactly(sock, MAC) == mac(token, b"server", client_nonce, first_nonce)
        send_frame(sock, pickle.dumps((1, "status")))
        rid, ok, value = recv_frame(sock)
        assert rid == 1 and ok and value["head"]["pid"] == secure_head["head_pid"]
    with connect(secure_head) as sock:
        assert read_hello(sock) != first_nonce
        sock.sendall(recorded)
        refused(secure_head, cluster_env, sock, "wrong cluster token")


def test_a_node_handshake_relabelled_as_the_cli_is_refused(secure_head, cluster_env):
    """The role byte is signed: a node cannot pass itself off as the CLI."""
    with connect(secure_head) as sock:
        reply, _ = handshake_reply(secure_head["token"], read_hello(sock),
                                   role=b"C", mac_role=b"N")
        sock.sendall(reply)
        refused(secure_head, cluster_env, sock, "wrong cluster token")


def test_an_unknown_role_is_refused(secure_head, cluster_env):
    with connect(secure_head) as sock:
        reply, _ = handshake_reply(secure_head["token"], read_hello(sock), role=b"X")
        sock.sendall(reply)
        refused(secure_head, cluster_env, sock, "unknown role")


# ----------------------------------------------- bad frames after the handshake
def test_a_1_gb_length_prefix_is_dropped_without_allocating_it(secure_head, cluster_env):
    with connect(secure_head) as sock:
        authenticate(sock, secure_head["token"])
        peer = local_addr(sock)
        try:
            sock.sendall(HEADER.pack(2**30) + b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass                                  # the head may drop us mid-send
        assert closed_by_peer(sock)
    wait_for_log(cluster_env, peer, rf"message of {2**30} bytes is over the \d+-byte limit")
    assert psutil.Process(secure_head["head_pid"]).memory_info().rss < 256 * 2**20
    assert_head_serves(secure_head, cluster_env)


def test_a_truncated_frame_is_dropped(secure_head, cluster_env):
    with connect(secure_head) as sock:
        authenticate(sock, secure_head["token"])
        sock.sendall(HEADER.pack(1000) + b"0123456789")
        sock.shutdown(socket.SHUT_WR)
        refused(secure_head, cluster_env, sock, "truncated message")


@pytest.mark.parametrize("payload", [
    b"\x80\x05 this is not a pickle" + bytes(range(256)),
    pickle.dumps(42),                        # not a tuple
    pickle.dumps({"op": "status"}),          # not a tuple either
    pickle.dumps(("1", "nope")),             # an unknown op
    pickle.dumps((1, 7)),                    # an op that is not a string
    pickle.dumps((1,)),                      # no op at all
    b"",                                     # an empty frame
], ids=["not-a-pickle", "int", "dict", "unknown-op", "int-op", "no-op", "empty"])
def test_a_malformed_request_is_dropped(secure_head, cluster_env, payload):
    with connect(secure_head) as sock:
        authenticate(sock, secure_head["token"])
        send_frame(sock, payload)
        refused(secure_head, cluster_env, sock, "malformed message")


def test_a_request_with_wrong_arguments_is_answered_with_an_error(secure_head, cluster_env):
    with connect(secure_head) as sock:
        authenticate(sock, secure_head["token"], role=b"N")
        send_frame(sock, pickle.dumps((1, "heartbeat")))            # arguments missing
        rid, ok, value = recv_frame(sock)
        assert rid == 1 and not ok and isinstance(value, TypeError)
        send_frame(sock, pickle.dumps((2, "status", "extra")))      # one too many
        rid, ok, value = recv_frame(sock)
        assert rid == 2 and not ok and isinstance(value, TypeError)
        send_frame(sock, pickle.dumps((3, "status")))               # the connection lives
        rid, ok, value = recv_frame(sock)
        assert rid == 3 and ok and value["head"]["pid"] == secure_head["head_pid"]
    assert_head_serves(secure_head, cluster_env)


def test_an_unknown_op_from_an_authenticated_client_does_not_kill_the_head(
        secure_head, cluster_env):
    with client(secure_head, "cli") as c:
        with pytest.raises(ConnectionError):
            c.call("nope")
    assert_head_serves(secure_head, cluster_env)


@pytest.mark.parametrize("role", ["node", "driver"])
def test_only_the_cli_may_shut_the_head_down(secure_head, cluster_env, role):
    with client(secure_head, role) as c:
        with pytest.raises(PermissionError, match="only the shoal CLI"):
            c.call("shutdown")
        assert c.call("status")["head"]["pid"] == secure_head["head_pid"]   # still served
    assert_head_serves(secure_head, cluster_env)


def test_a_refused_shutdown_is_logged_with_the_peer_address(secure_head, cluster_env):
    with client(secure_head, "node") as c:
        peer = local_addr(c.sock)
        with pytest.raises(PermissionError):
            c.call("shutdown")
    wait_for_log(cluster_env, peer, "shut", timeout=2)


def test_a_node_registration_the_database_cannot_store_does_not_stop_node_death_detection(
        secure_head, cluster_env):
    with client(secure_head, "node") as c:
        with pytest.raises((TypeError, ValueError), match="JSON"):
            c.call("register_node", "b" * 32, {"host": {"not", "json"}, "resources": {}})
    node = launch.start_node(secure_head["address"], num_cpus=1)
    psutil.Process(node["node_pid"]).kill()
    wait_for(lambda: any(n["pid"] == node["node_pid"] and n["state"] == "DEAD"
                         for n in launch.status()["nodes"]),
             timeout=5, what="the killed node to be declared dead")


def test_a_peer_that_resets_while_the_head_writes_replies_is_dropped_and_logged(
        secure_head, cluster_env):
    request = pickle.dumps((1, "status"))
    frame = HEADER.pack(len(request)) + request
    with connect(secure_head) as sock:
        authenticate(sock, secure_head["token"])
        peer = local_addr(sock)
        sock.settimeout(1.0)
        # Pipeline requests without reading a reply until our send stalls: the
        # head then no longer reads, so it is waiting for its replies to drain.
        for _ in range(100_000):
            try:
                sock.sendall(frame * 100)
            except socket.timeout:
                break
        else:
            pytest.fail("the head kept reading without its replies being read")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # closed with SO_LINGER 0: a reset
    assert_head_serves(secure_head, cluster_env)
    wait_for_log(cluster_env, peer, "reset|closed|dropped")


# ------------------------------------------------------------------ volume
def test_fifty_garbage_connections_then_status_still_works(secure_head, cluster_env):
    rng = random.Random(50)
    socks = [connect(secure_head) for _ in range(50)]
    try:
        peers = [local_addr(s) for s in socks]
        for s in socks:
            s.sendall(rng.randbytes(100))
        for s in socks:
            assert closed_by_peer(s)
    finally:
        for s in socks:
            s.close()
    for peer in peers:
        wait_for_log(cluster_env, peer, "not a shoal handshake")
    assert_head_serves(secure_head, cluster_env)
    assert len(psutil.Process(secure_head["head_pid"]).net_connections(kind="tcp")) < 20


# ----------------------------------------------------------- the client side
class FakeHead:
    """A plain socket server on loopback that serves one connection with
    ``behaviour`` (a MAGIC hello, or not; a wrong MAC, or a close) and
    records every byte the client sends, until the client closes."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.received = b""
        self.client_closed = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(SOCKET_TIMEOUT_S)
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(SOCKET_TIMEOUT_S)
            hello = (b"HTTP/1.1" if self.behaviour == "not-shoal" else MAGIC)
            conn.sendall(hello + os.urandom(HELLO_SIZE - len(hello)))
            if self.behaviour == "wrong-mac":
                self._receive(conn, REPLY_SIZE)
                conn.sendall(os.urandom(MAC))
            elif self.behaviour == "close":
                self._receive(conn, REPLY_SIZE)
                return
            self._receive(conn, None)      # everything else, until the client closes

    def _receive(self, conn, n):
        while n is None or len(self.received) < n:
            try:
                chunk = conn.recv(65536 if n is None else n - len(self.received))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.client_closed = True
                return
            self.received += chunk

    def join(self):
        self.thread.join(SOCKET_TIMEOUT_S * 2)
        self.server.close()
        assert not self.thread.is_alive()


@pytest.mark.parametrize("behaviour, message", [
    ("wrong-mac", "does not know the cluster token"),
    ("close", "refused the handshake"),
    ("not-shoal", "not a shoal head"),
])
def test_a_fake_head_gets_nothing_but_the_handshake(behaviour, message):
    token = secrets.token_hex(32)
    fake = FakeHead(behaviour)
    with pytest.raises(AuthError, match=message):
        HeadClient(fake.address, token, "cli", timeout=SOCKET_TIMEOUT_S)
    fake.join()
    assert fake.client_closed or behaviour == "close"
    if behaviour == "not-shoal":
        assert fake.received == b""
    else:
        assert len(fake.received) == REPLY_SIZE and fake.received.startswith(MAGIC + b"C")
        assert token.encode() not in fake.received
