"""A local cluster's doors: what ``shoal.init()`` opens beside its node so
that other processes of this machine can look in.

- A driver socket (cluster/driver_socket.py) with a token of the session's
  own, kept in a 0600 file next to the socket's record: `shoal list`,
  ``init(address="auto")`` and the dashboard reach the local cluster with
  it as they reach an agent.
- The dashboard (``include_dashboard``, when its extra is installed): its
  HTTP socket is bound here, on loopback (port 8265, or a free one), so the
  address printed at init is already the right one; the process itself
  starts half a second later, from the node's loop, so a short script pays
  nothing for it. It logs you in with a one-time code printed in the link
  (never the token), and it ends with the session.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys

from .auth import new_token, write_token
from .driver_socket import DriverListener
from .state import StateDir

DASHBOARD_DELAY_S = 0.5


def _quiet(msg: str) -> None:
    pass


class LocalDoors:
    def __init__(self, node, dashboard: bool, dashboard_host: str, dashboard_port: int):
        state = StateDir().ensure()
        self.token = new_token()
        self.token_file = os.path.join(state.sockets_dir, f"{node.node_id.hex()[:16]}.token")
        os.makedirs(state.sockets_dir, mode=0o700, exist_ok=True)
        write_token(self.token_file, self.token)
        self.drivers = DriverListener(node, self.token, False, _quiet, self.token_file)
        self.proc = None
        self.http = None
        self.url = None
        self.code_file = None
        self.log_path = os.path.join(state.sockets_dir, f"{node.node_id.hex()[:16]}.dashboard.log")
        if dashboard and all(importlib.util.find_spec(m) is not None
                             for m in ("aiohttp", "prometheus_client")):
            self.http = _bind(dashboard_host, dashboard_port)
            host, port = self.http.getsockname()[:2]
            code = secrets.token_urlsafe(16)
            self.code_file = os.path.join(state.sockets_dir,
                                          f"{node.node_id.hex()[:16]}.login")
            write_token(self.code_file, code)
            self.url = f"http://{host}:{port}"
            self.login_url = f"{self.url}/login?code={code}"
            node.loop.call_later(DASHBOARD_DELAY_S, self._start_dashboard)
        self.stopped = False

    def _start_dashboard(self) -> None:
        """On the node's loop, half a second after init."""
        if self.stopped or self.http is None:
            return
        fd = self.http.fileno()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.dashboard", "--address",
                 "unix://" + self.drivers.path, "--token-file", self.token_file, "--fd",
                 str(fd), "--login-code-file", self.code_file, "--no-record"],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        except OSError:
            self.proc = None
        finally:
            log.close()

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.http is not None:
            self.http.close()
        self.drivers.stop()
        for path in (self.token_file, self.code_file, self.log_path):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.bind((host, 0))       # 8265 is taken (another session's dashboard): any port
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
