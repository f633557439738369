"""The ``shoal`` command line: ``demo``, the cluster's ``start``, ``stop``
and ``status``, jobs (cluster/job_cli.py), and looking inside a running
cluster: ``list``, ``summary``, ``timeline``, ``memory`` (cli/state.py).
Ray's conventions throughout."""
from __future__ import annotations

import argparse
import json
import sys

from . import state as state_cli


def _resources(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise SystemExit(f"--resources must be JSON, e.g. '{{\"edge\": 1}}', got {text!r}")
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
            for k, v in value.items()):
        raise SystemExit(f"--resources must map names to non-negative numbers, got {text!r}")
    return value


def connection(parser) -> None:
    """--address and --token-file: which running cluster a command talks to."""
    parser.add_argument("--address", default=None,
                        help="HOST:PORT of the cluster's head (default: this machine's)")
    parser.add_argument("--token-file", default=None,
                        help="file holding the cluster token (else $SHOAL_TOKEN, else the "
                             "head's on this machine)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: distributed Python for AI")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short showcase on a local cluster")
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs to use (default: all)")
    demo.add_argument("--samples", type=int, default=20_000_000,
                      help="Monte Carlo samples in total (default: 20M)")
    start = sub.add_parser("start", help="start a head (--head) or join a node (--address)")
    start.add_argument("--head", action="store_true", help="start the cluster's head here")
    start.add_argument("--address", help="HOST:PORT of the head to join")
    start.add_argument("--host", default="127.0.0.1",
                       help="address the head listens on (default: loopback only)")
    start.add_argument("--port", type=int, default=None, help="the head's port (default 6380)")
    start.add_argument("--token-file", default=None,
                       help="file holding the cluster token (else $SHOAL_TOKEN, else the "
                            "head's on this machine)")
    start.add_argument("--num-cpus", type=float, default=None)
    start.add_argument("--num-gpus", type=float, default=None)
    start.add_argument("--resources", default=None, help='custom resources as JSON')
    start.add_argument("--dashboard-port", type=int, default=8265,
                       help="with --head: the dashboard's port (default 8265; 0: any free)")
    start.add_argument("--dashboard-host", default=None,
                       help="with --head: where the dashboard listens (default: --host)")
    start.add_argument("--no-dashboard", action="store_true",
                       help="with --head: start no dashboard")
    start.add_argument("--storage", default=None,
                       help="with --head: keep the cluster's tables in this Redis "
                            "(redis://HOST:PORT/DB or unix:///path) instead of SQLite")
    sub.add_parser("stop", help="stop the head and nodes `shoal start` launched here")
    job = sub.add_parser("job", help="run driver programs on the cluster")
    jobs = job.add_subparsers(dest="job_command", required=True)
    submit = jobs.add_parser("submit", help="run `-- COMMAND...` on the cluster")
    submit.add_argument("--working-dir", default=None,
                        help="a directory shipped to the cluster; the command runs in it")
    submit.add_argument("--runtime-env-json", default=None, metavar="JSON",
                        help='the job\'s runtime_env, e.g. \'{"env_vars": {"K": "V"}, '
                             '"working_dir": "."}\' (its tasks and actors inherit it)')
    submit.add_argument("--no-wait", action="store_true",
                        help="print the job id and return instead of following its output")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER)
    for name, text in (("status", "a job's state"), ("logs", "a job's output"),
                       ("stop", "stop a running job")):
        one = jobs.add_parser(name, help=text)
        one.add_argument("job_id")
        if name == "logs":
            one.add_argument("--follow", "-f", action="store_true")
    jobs.add_parser("list", help="every job")
    for p in [submit] + [jobs.choices[n] for n in ("status", "logs", "stop", "list")]:
        p.add_argument("--address", default=None)
        p.add_argument("--token-file", default=None)
    status = sub.add_parser("status", help="nodes, resources used/total, pending work")
    connection(status)
    state_cli.add_parsers(sub, connection)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ..demo import run_demo
        return run_demo(num_cpus=args.num_cpus, samples=args.samples)

    from .. import config
    from ..cluster import launch
    from ..cluster.auth import AuthError
    from ..exceptions import ShoalError
    try:
        if args.command == "start":
            resources = _resources(args.resources)
            if args.head == bool(args.address):
                parser.error("shoal start needs exactly one of --head or --address HOST:PORT")
            if args.head:
                out = launch.start_head(
                    args.host, config.get("head_port") if args.port is None else args.port,
                    args.num_cpus, args.num_gpus, resources, args.storage,
                    None if args.no_dashboard else args.dashboard_port, args.dashboard_host)
                print(f"shoal head started at {out['address']} (pid {out['head_pid']}), "
                      f"with a node on this machine (pid {out['node_pid']}).")
                if out["dashboard"]:
                    print(f"Dashboard: {out['dashboard']} (log in with the cluster token; "
                          f"Prometheus metrics at {out['dashboard']}/metrics)")
                elif out.get("dashboard_note"):
                    print(out["dashboard_note"])
                print(f"The cluster token is in {out['token_file']} (readable by you only).")
                print("To join another machine, copy that file there and run:")
                print(f"  shoal start --address {out['address']} --token-file PATH")
                print("(or set SHOAL_TOKEN to its contents). `shoal status` shows the nodes;")
                print("`shoal stop` ends what `shoal start` launched on this machine.")
            else:
                out = launch.start_node(args.address, args.token_file, args.num_cpus,
                                        args.num_gpus, resources)
                print(f"node (pid {out['node_pid']}) joined the cluster at {out['address']}.")
            return 0
        if args.command == "stop":
            stopped = launch.stop()
            print("stopped " + ", ".join(stopped) if stopped else "nothing to stop")
            return 0
        if args.command == "job":
            from ..cluster import job_cli
            return job_cli.run(args)
        if args.command == "status":
            print(launch.format_status(launch.status(args.address, args.token_file)))
            return 0
        if args.command in state_cli.COMMANDS:
            return state_cli.run(args)
    except (launch.LaunchError, AuthError, ValueError, ConnectionError, ShoalError) as e:
        print(f"shoal {args.command}: {e}", file=sys.stderr)
        return 1
    return 2

