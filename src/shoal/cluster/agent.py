"""A node agent: one per machine in a cluster (the head's machine too).

    python -m shoal.cluster.agent --address HOST:PORT [--token-file F]
                                  [--num-cpus N] [--num-gpus N] [--resources JSON]

It owns the machine's node (worker processes, local scheduling, the
shared-memory store: node/node.py, as embedded in a local driver), joins
the head with the cluster token, and tells it every
``heartbeat_interval_s`` that it is alive, with its free resources and
pending work. If the connection drops it reconnects (the head may have
restarted); if the head declared it dead meanwhile (fenced), it rejoins
under a new node id.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

from .. import config
from .auth import AuthError, find_token
from .client import HeadClient, HeadRequests
from .driver_socket import DriverListener
from .peering import Fetcher, PeerListener
from .state import StateDir


def log(msg: str) -> None:
    print(f"[shoal node {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Agent:
    """Joins ``node`` to the cluster at ``address`` and keeps it there. A
    machine's agent process has one (``main``); so does a driver on a
    machine without a node (``driver=True``, core/client.py): its node has
    no workers and sends all work to the others."""

    def __init__(self, address: str, token: str, node, is_head_node: bool = False,
                 driver: bool = False):
        self.address = address
        self.token = token
        self.stop_event = threading.Event()
        self.node = node
        self.node_id = self.node.node_id.hex()
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "resources": self.node.total_resources, "is_head_node": is_head_node,
                     "driver": driver}
        # drivers on this machine connect here (not to a driver's own node)
        self.drivers = None if driver else DriverListener(node, token, is_head_node, log)
        self.peer_listener = None       # other nodes' links and fetches, once we know our address

    def _register(self, client: HeadClient) -> None:
        if self.peer_listener is None:
            # other nodes reach us where we reach the head from (loopback for a loopback head)
            host = client.sock.getsockname()[0]
            self.peer_listener = PeerListener(self.node, self.token, host, log)
            self.info["peer_address"] = list(self.peer_listener.address)
            self.node.join_cluster(self.token, Fetcher(self.token), log,
                                   self.peer_listener.address, self.info["driver"],
                                   HeadRequests(self.address, self.token))
        while client.call("register_node", self.node_id, self.info) == "fenced":
            old = self.node_id
            self.node_id = os.urandom(16).hex()
            self.node.rejoined(bytes.fromhex(self.node_id))
            log(f"the head declared node {old[:12]} dead; rejoining as {self.node_id[:12]}")
        # the first heartbeat at once: the node's row has its load and stats from the start
        client.call("heartbeat", self.node_id, *self._load())

    def join(self) -> HeadClient:
        """Connect and register once; errors (a wrong token, no head) raise."""
        client = HeadClient(self.address, self.token, "node")
        try:
            self._register(client)
            self.node.update_view(client.call("view"))
        except BaseException:
            client.close()
            raise
        return client

    def run(self, first: HeadClient | None = None) -> None:
        interval = config.get("heartbeat_interval_s")
        backoff = 0.2
        while not self.stop_event.is_set():
            try:
                with (first or self.join()) as client:
                    first = None
                    if not self.info["driver"]:
                        log(f"joined the cluster at {self.address} as node {self.node_id[:12]}")
                    backoff = 0.2
                    while not self.stop_event.wait(interval):
                        answer = client.call("heartbeat", self.node_id, *self._load())
                        if answer != "ok":          # fenced, or a head that forgot us
                            self._register(client)
                        self.node.update_view(client.call("view"))
            except AuthError as e:      # a wrong token does not fix itself: give up
                log(f"cannot join {self.address}: {e}")
                if self.peer_listener is not None:
                    self.peer_listener.stop()
                if self.drivers is not None:
                    self.drivers.stop()
                self.node.stop()
                raise SystemExit(1)
            except (OSError, ConnectionError, ValueError) as e:
                if not self.stop_event.is_set():
                    log(f"lost the head at {self.address} ({e}); reconnecting")
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
        if self.peer_listener is not None:
            self.peer_listener.stop()
        if self.drivers is not None:
            self.drivers.stop()
        self.node.stop()

    def _load(self) -> tuple[dict, int, dict]:
        node = self.node
        with node.lock:
            free = {k: max(0.0, v) for k, v in
                    node.resources.as_floats(node.resources.available).items()}
            pending = sum(len(q) for q in node.queues.values()) + len(node.pending_actors)
            # tasks queued on a busy worker behind the one it runs wait too
            pending += sum(len(w.inflight) - 1 for w in node.workers.values()
                           if w.actor is None and len(w.inflight) > 1)
            stats = node.stats()
        return free, pending, stats


def main(argv=None) -> int:
    from ..node.machine import machine_resources
    p = argparse.ArgumentParser(prog="python -m shoal.cluster.agent")
    p.add_argument("--address", required=True)
    p.add_argument("--token-file", default=None)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", default=None, help='JSON, e.g. \'{"edge": 1}\'')
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--head-node", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    custom = json.loads(args.resources) if args.resources else None
    res, store = machine_resources(args.num_cpus, args.num_gpus, custom,
                                   args.object_store_memory)
    from ..node.node import Node
    node_id = os.urandom(16)
    # workers' output is kept in the state directory, after the agent too (`shoal logs`)
    logs = os.path.join(StateDir().path, "worker-logs", f"{os.getpid()}-{node_id.hex()[:12]}")
    node = Node(res, store, False, "cluster", os.urandom(4), node_id, logs_dir=logs)
    agent = Agent(args.address, find_token(args.token_file), node, args.head_node)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
