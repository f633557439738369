"""``python -m shoal.dashboard``: serve the dashboard of a running cluster.

Connects as a driver (``--address``, default this machine's cluster),
listens on ``--host``:``--port`` (loopback and 8265 unless told; port 0
picks a free one), writes its address to ``dashboard.json`` in the state
directory, and exits when the cluster goes away or on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shoal.dashboard")
    p.add_argument("--address", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8265)
    p.add_argument("--token-file", default=None)
    p.add_argument("--fd", type=int, default=None,
                   help="serve on this inherited listening socket (a local cluster's)")
    p.add_argument("--login-code-file", default=None,
                   help="a one-time login code (read, then removed)")
    p.add_argument("--no-record", action="store_true",
                   help="write no dashboard.json (a local cluster's dashboard)")
    args = p.parse_args(argv)

    import shoal
    from ..cluster.auth import find_token
    from ..cluster.state import StateDir
    from .server import serve, url

    token = find_token(args.token_file)
    if args.token_file:
        os.environ["SHOAL_TOKEN"] = token      # this process's own driver connection
    code = None
    if args.login_code_file:
        with open(args.login_code_file) as f:
            code = f.read().strip()
        os.unlink(args.login_code_file)
    shoal.init(address=args.address, log_to_driver=False, _as_tool=True)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        sock.setblocking(False)
    else:
        sock = _listen(args.host, args.port)
    address = url(sock)
    record = None if args.no_record else os.path.join(StateDir().ensure().path,
                                                      "dashboard.json")

    def ready():
        if record is not None:
            with open(record, "w") as f:
                json.dump({"url": address, "pid": os.getpid()}, f)
        print(f"shoal dashboard at {address}", flush=True)

    async def run():
        task = asyncio.ensure_future(serve(token, sock, ready, code))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        from ..core import current_core
        core = current_core()
        while not task.done():          # the cluster went away: so do we
            if getattr(core, "closed", False):
                task.cancel()
                break
            await asyncio.sleep(1.0)
        try:
            await task
        except asyncio.CancelledError:
            pass
    try:
        asyncio.run(run())
    finally:
        if record is not None:
            try:
                os.unlink(record)
            except FileNotFoundError:
                pass
        shoal.shutdown()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket: ``port``, or a free one if that is
    taken (said on stderr)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        if port == 0:
            raise
        print(f"port {port} is taken ({e.strerror}); the dashboard takes a free one",
              file=sys.stderr)
        sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


if __name__ == "__main__":
    sys.exit(main())
