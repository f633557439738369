"""Cluster authentication: every connection proves it knows the cluster token
before anything it sends is unpickled.

The handshake is raw fixed-size bytes (nothing to parse, nothing to
unpickle), mutual, and bound to a fresh random nonce per connection, so a
recorded handshake cannot be replayed:

    server -> client   MAGIC | server_nonce (32)
    client -> server   MAGIC | role (1) | client_nonce (32) | HMAC(token, "client" | server_nonce | client_nonce | role)
    server -> client   HMAC(token, "server" | client_nonce | server_nonce)

The server checks the client's MAC with ``hmac.compare_digest`` and closes
the connection on any mismatch; the client checks the server's MAC the same
way (a fake head learns nothing and gets nothing). The token itself never
crosses the wire and is never logged.

The token comes from (first found): an explicit ``--token-file``, the
``SHOAL_TOKEN`` environment variable, or the token file a head started on
this machine wrote into the state directory (mode 0600).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket

MAGIC = b"SHOAL\x01\x00\x00"
NONCE = 32
MAC = 32
ROLES = {b"N": "node", b"D": "driver", b"C": "cli", b"T": "tool"}
HELLO_SIZE = len(MAGIC) + NONCE
REPLY_SIZE = len(MAGIC) + 1 + NONCE + MAC


class AuthError(ConnectionError):
    """A peer failed to prove it knows the cluster token (or spoke garbage)."""


def new_token() -> str:
    return secrets.token_hex(32)


def write_token(path: str, token: str) -> None:
    """Write ``token`` to ``path`` readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)


def read_token(path: str) -> str:
    with open(path) as f:
        token = f.read().strip()
    if len(token) < 32:
        raise AuthError(f"the token file {path} does not hold a cluster token")
    return token


def find_token(token_file: str | None = None) -> str:
    """The cluster token: --token-file, else $SHOAL_TOKEN, else this machine's head's."""
    if token_file:
        return read_token(token_file)
    env = os.environ.get("SHOAL_TOKEN")
    if env:
        return env.strip()
    from .state import StateDir
    path = StateDir().token_path
    if os.path.exists(path):
        return read_token(path)
    raise AuthError("no cluster token: pass --token-file PATH, set SHOAL_TOKEN, or run on "
                    "the head's machine (where `shoal start --head` wrote it)")


def _mac(token: str, *parts: bytes) -> bytes:
    return hmac.new(token.encode(), b"".join(parts), hashlib.sha256).digest()


# ---------------------------------------------------------------- server side
def server_hello() -> tuple[bytes, bytes]:
    """(bytes to send, the nonce to remember)."""
    nonce = secrets.token_bytes(NONCE)
    return MAGIC + nonce, nonce


def server_check(token: str, server_nonce: bytes, reply: bytes) -> tuple[str, bytes]:
    """Check a client's reply; (role, bytes to send back) or AuthError."""
    if len(reply) != REPLY_SIZE or not reply.startswith(MAGIC):
        raise AuthError("not a shoal handshake")
    rest = reply[len(MAGIC):]
    role, client_nonce, mac = rest[:1], rest[1:1 + NONCE], rest[1 + NONCE:]
    if role not in ROLES:
        raise AuthError("unknown role in handshake")
    if not hmac.compare_digest(mac, _mac(token, b"client", server_nonce, client_nonce, role)):
        raise AuthError("wrong cluster token")
    return ROLES[role], _mac(token, b"server", client_nonce, server_nonce)


def server_handshake(sock: socket.socket, token: str, role: str | tuple, timeout: float) -> str:
    """Authenticate a blocking socket that connected to us, which must act
    as ``role`` (or one of a tuple of roles, the one it took is returned);
    AuthError (or OSError) otherwise. Nothing it sends before this returns
    is read as anything but handshake bytes."""
    sock.settimeout(timeout)
    hello, nonce = server_hello()
    sock.sendall(hello)
    their_role, answer = server_check(token, nonce, _recv_exactly(sock, REPLY_SIZE))
    allowed = (role,) if isinstance(role, str) else role
    if their_role not in allowed:
        raise AuthError(f"a {their_role} may not connect as a {' or '.join(allowed)}")
    sock.sendall(answer)
    return their_role


# ---------------------------------------------------------------- client side
def client_handshake(sock: socket.socket, token: str, role: str) -> None:
    """Authenticate a connected blocking socket (as ``role``); AuthError if
    the server does not know the token or is not a shoal server."""
    code = next(k for k, v in ROLES.items() if v == role)
    hello = _recv_exactly(sock, HELLO_SIZE)
    if not hello.startswith(MAGIC):
        raise AuthError("the server is not a shoal head or node")
    server_nonce = hello[len(MAGIC):]
    client_nonce = secrets.token_bytes(NONCE)
    sock.sendall(MAGIC + code + client_nonce
                 + _mac(token, b"client", server_nonce, client_nonce, code))
    try:
        answer = _recv_exactly(sock, MAC)
    except ConnectionError:
        raise AuthError("the server refused the handshake: wrong cluster token?") from None
    if not hmac.compare_digest(answer, _mac(token, b"server", client_nonce, server_nonce)):
        raise AuthError("the server does not know the cluster token")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)
