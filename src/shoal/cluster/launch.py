"""What ``shoal start``, ``shoal stop`` and ``shoal status`` do.

``start`` launches the head and node agents as background processes in
their own sessions (they outlive the shell), logs into the state directory,
and records their pids there; ``stop`` ends exactly those processes
(SIGTERM, then SIGKILL after a grace period), never anything found by name.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import psutil

from .auth import AuthError, find_token, new_token, read_token, write_token
from .client import HeadClient, parse_address
from .state import StateDir

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


class LaunchError(RuntimeError):
    pass


def _spawn(state: StateDir, name: str, args: list[str]) -> subprocess.Popen:
    log = open(state.log_path(name), "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()
    state.record_process(name, proc.pid)
    return proc


def _wait(what: str, condition, proc: subprocess.Popen, log_path: str):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise LaunchError(f"{what} exited with code {proc.returncode}; see {log_path}:\n"
                              + _tail(log_path))
        time.sleep(0.05)
    raise LaunchError(f"{what} did not come up within {START_TIMEOUT_S:g} s; see {log_path}")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _node_args(address: str, num_cpus, num_gpus, resources, token_file) -> list[str]:
    args = ["shoal.cluster.agent", "--address", address]
    if token_file:
        args += ["--token-file", token_file]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    if resources:
        args += ["--resources", json.dumps(resources)]
    return args


def _wait_for_node(address: str, token: str, proc: subprocess.Popen, log_path: str) -> None:
    def joined():
        try:
            with HeadClient(address, token, "cli") as c:
                # registered and its first heartbeat in (the row has its stats)
                return any(n["pid"] == proc.pid and n["state"] == "ALIVE" and n.get("stats")
                           for n in c.call("status")["nodes"])
        except (OSError, ConnectionError):
            return False
    _wait(f"the node agent (pid {proc.pid})", joined, proc, log_path)


def start_head(host: str, port: int, num_cpus=None, num_gpus=None, resources=None,
               storage: str | None = None, dashboard_port: int | None = None,
               dashboard_host: str | None = None) -> dict:
    """The head and a node on this machine, and the dashboard if
    ``dashboard_port`` is given (`shoal start --head` gives 8265) and its
    extra is installed (else ``dashboard_note`` says why not). The dashboard listens on ``dashboard_host``
    (default: the head's host, so loopback unless ``--host`` was given)."""
    state = StateDir().ensure()
    head = state.read_head()
    if head and psutil.pid_exists(head["pid"]) and head["pid"] in state.processes().values():
        raise LaunchError(f"a head already runs on this machine (pid {head['pid']}, "
                          f"{head['host']}:{head['port']}); `shoal stop` it first")
    write_token(state.token_path, new_token())
    try:
        os.unlink(state.head_path)
    except FileNotFoundError:
        pass
    proc = _spawn(state, "head", ["shoal.cluster.head", "--host", host, "--port", str(port),
                                  "--token-file", state.token_path]
                  + (["--storage", storage] if storage else []))
    info = _wait("the head", lambda: (h := state.read_head()) and h["pid"] == proc.pid and h,
                 proc, state.log_path("head"))
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    address = f"{connect_host}:{info['port']}"
    name = f"node-{os.getpid()}-{time.monotonic_ns()}"
    node = _spawn(state, name, _node_args(address, num_cpus, num_gpus, resources,
                                          state.token_path) + ["--head-node"])
    _wait_for_node(address, read_token(state.token_path), node, state.log_path(name))
    out = {"address": address, "token_file": state.token_path, "head_pid": proc.pid,
           "node_pid": node.pid, "dashboard": None, "dashboard_pid": None}
    if dashboard_port is not None:
        out.update(_start_dashboard(state, address, dashboard_host or host, dashboard_port))
    return out


def _start_dashboard(state: StateDir, address: str, host: str, port: int) -> dict:
    missing = [m for m in ("aiohttp", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        return {"dashboard": None, "dashboard_note": f"no dashboard: it needs "
                f"{' and '.join(missing)} (pip install 'shoal[dashboard]')"}
    record = os.path.join(state.path, "dashboard.json")
    try:
        os.unlink(record)
    except FileNotFoundError:
        pass
    proc = _spawn(state, "dashboard", ["shoal.dashboard", "--address", address, "--host",
                                       "127.0.0.1" if host in ("", None) else host,
                                       "--port", str(port), "--token-file", state.token_path])

    def up():
        try:
            with open(record) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == proc.pid else None
    info = _wait("the dashboard", up, proc, state.log_path("dashboard"))
    return {"dashboard": info["url"], "dashboard_pid": proc.pid}


def start_node(address: str, token_file=None, num_cpus=None, num_gpus=None,
               resources=None) -> dict:
    parse_address(address)
    state = StateDir().ensure()
    token = find_token(token_file)           # fail here, clearly, rather than in the agent
    try:
        HeadClient(address, token, "cli").close()
    except OSError as e:
        if isinstance(e, AuthError):
            raise
        raise LaunchError(f"cannot reach the head at {address}: {e}") from None
    name = f"node-{os.getpid()}-{time.monotonic_ns()}"
    node = _spawn(state, name, _node_args(address, num_cpus, num_gpus, resources, token_file))
    _wait_for_node(address, token, node, state.log_path(name))
    return {"address": address, "node_pid": node.pid}


def stop() -> list[str]:
    """End the processes ``shoal start`` launched on this machine."""
    state = StateDir()
    stopped = []
    procs = state.processes()
    # the dashboard first (a driver of the cluster), the head last
    ordered = sorted(procs.items(), key=lambda kv: {"dashboard": 0, "head": 2}.get(kv[0], 1))
    for name, pid in ordered:
        try:
            p = psutil.Process(pid)
            if not any(part.startswith(("shoal.cluster", "shoal.dashboard"))
                       for part in p.cmdline()):
                raise psutil.NoSuchProcess(pid)    # the pid was reused by someone else
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_GRACE_S)
            except psutil.TimeoutExpired:
                p.kill()
                p.wait(5)
            stopped.append(f"{name} (pid {pid})")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        state.forget_process(name)
    if "head" in procs:
        try:
            os.unlink(state.head_path)
        except FileNotFoundError:
            pass
    return stopped


def head_address(address: str | None) -> str:
    if address:
        return address
    head = StateDir().read_head()
    if head is None:
        raise LaunchError("no head runs on this machine; pass --address HOST:PORT")
    host = "127.0.0.1" if head["host"] in ("0.0.0.0", "") else head["host"]
    return f"{host}:{head['port']}"


def status(address: str | None = None, token_file: str | None = None) -> dict:
    address = head_address(address)
    try:
        with HeadClient(address, find_token(token_file), "cli") as c:
            return c.call("status")
    except AuthError:
        raise
    except OSError as e:
        raise LaunchError(f"cannot reach the head at {address}: {e}") from None


def format_status(s: dict) -> str:
    head = s["head"]
    # a driver on a machine without a node joins with a node of its own that runs nothing
    drivers = [n for n in s["nodes"] if n.get("driver") and n["state"] == "ALIVE"]
    nodes = [n for n in s["nodes"] if not n.get("driver")]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    lines = [f"head {head['host']}:{head['port']} (pid {head['pid']}), "
             f"{len(alive)} node(s) alive, {len(nodes) - len(alive)} dead"]
    total: dict = {}
    free: dict = {}
    for n in alive:
        for k, v in n["resources"].items():
            total[k] = total.get(k, 0) + v
        for k, v in n["available"].items():
            free[k] = free.get(k, 0) + v
    for k in sorted(total):
        if not total[k]:
            continue
        if k == "memory":
            lines.append(f"  {k}: {(total[k] - free.get(k, 0)) / 2**30:.1f}"
                         f"/{total[k] / 2**30:.1f} GiB used")
        else:
            lines.append(f"  {k}: {total[k] - free.get(k, 0):g}/{total[k]:g} used")
    lines.append(f"  pending tasks: {sum(n['pending_tasks'] for n in alive)}")
    lines.append("nodes:")
    for n in nodes:
        res = ", ".join(f"{k}={v:g}" for k, v in sorted(n["resources"].items())
                        if k != "memory")
        extra = f" ({n['death_reason']})" if n["state"] == "DEAD" else ""
        lines.append(f"  {n['node_id'][:12]} {n['state']:<5} {n['host']} pid={n['pid']} "
                     f"{res}{' [head]' if n['is_head_node'] else ''}{extra}")
    if drivers:
        lines.append("drivers connected from machines without a node:")
        for n in drivers:
            lines.append(f"  {n['node_id'][:12]} {n['host']} pid={n['pid']}")
    return "\n".join(lines)
