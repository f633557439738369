"""``shoal list | summary | timeline | memory | logs | doctor``: the state
API (shoal.util.state, shoal.util.doctor) from the terminal, against a
running cluster.

The command connects as a driver (``--address``, default this machine's
cluster; ``--token-file`` or $SHOAL_TOKEN for another machine's), asks,
prints and disconnects. Tables show the brief fields; ``--format json``
prints every field of every row.
"""
from __future__ import annotations

import json
import os

KINDS = {"tasks": "tasks", "actors": "actors", "objects": "objects", "nodes": "nodes",
         "jobs": "jobs", "workers": "workers", "placement-groups": "placement_groups"}
SUMMARIES = ("tasks", "actors", "objects")
COMMANDS = ("list", "summary", "timeline", "memory", "logs", "doctor")

# the columns of each kind's table (all fields with --format json)
COLUMNS = {
    "tasks": ("task_id", "name", "state", "type", "node_id", "worker_pid", "error_type"),
    "actors": ("actor_id", "class_name", "state", "name", "node_id", "pid", "num_restarts"),
    "objects": ("object_id", "size", "where", "refs", "task", "node_id"),
    "nodes": ("node_id", "node_ip", "state", "is_head_node", "resources_total"),
    "jobs": ("job_id", "type", "status", "entrypoint"),
    "workers": ("worker_id", "pid", "worker_type", "state", "is_alive", "node_id",
                "current_task"),
    "placement_groups": ("placement_group_id", "name", "state", "strategy", "bundles"),
}


def add_parsers(sub, connection) -> None:
    """The state commands, on the ``shoal`` parser's subparsers."""
    lst = sub.add_parser("list", help="list the cluster's tasks, actors, objects, nodes, "
                                      "jobs, workers or placement groups")
    lst.add_argument("kind", choices=sorted(KINDS))
    lst.add_argument("--filter", "-f", action="append", default=[], metavar="KEY=VALUE",
                     help="keep rows whose KEY is VALUE (KEY!=VALUE: is not); repeatable")
    lst.add_argument("--limit", type=int, default=100, help="rows at most (default 100)")
    lst.add_argument("--detail", action="store_true", help="every field")
    lst.add_argument("--format", choices=("table", "json"), default="table")
    summary = sub.add_parser("summary", help="tasks, actors or objects grouped by "
                                             "function/class and state")
    summary.add_argument("kind", choices=SUMMARIES)
    summary.add_argument("--format", choices=("table", "json"), default="table")
    timeline = sub.add_parser("timeline", help="write a Chrome trace (Perfetto) of the "
                                               "tasks' runs")
    timeline.add_argument("--output", "-o", default=None,
                          help="file to write (default: timeline-<time>.json here)")
    memory = sub.add_parser("memory", help="objects by size and owner, with the store's totals")
    memory.add_argument("--stats-only", action="store_true")
    logs = sub.add_parser("logs", help="what a worker, an actor or a task printed")
    logs.add_argument("source", choices=("worker", "actor", "task"))
    logs.add_argument("--id", default=None, help="the actor's or the task's id")
    logs.add_argument("--pid", type=int, default=None, help="the worker's pid")
    logs.add_argument("--node-id", default=None,
                      help="the worker's node (where pids repeat across machines)")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new output until the worker exits")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines first")
    doctor = sub.add_parser("doctor", help="why is it stuck: pending work explained")
    doctor.add_argument("--straggler-factor", type=float, default=5.0,
                        help="a running task is a straggler past this many times its "
                             "function's median run (default 5)")
    doctor.add_argument("--straggler-min-s", type=float, default=10.0,
                        help="...and past this many seconds (default 10)")
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    for p in (lst, summary, timeline, memory, logs, doctor):
        connection(p)


def run(args) -> int:
    import shoal
    from ..util import state
    _connect(args)
    try:
        if args.command == "list":
            kind = KINDS[args.kind]
            rows = getattr(state, f"list_{kind}")(
                filters=[parse_filter(f) for f in args.filter], limit=args.limit,
                detail=args.detail or args.format == "json", raise_on_missing_output=False)
            if args.format == "json":
                print(json.dumps(rows, indent=2, default=str))
            else:
                print(format_table(rows, COLUMNS[kind] if not args.detail else None))
                if len(rows) == args.limit:
                    which = "newest" if kind == "tasks" else "first"
                    print(f"(the {which} {args.limit}; --limit shows more)")
        elif args.command == "summary":
            result = getattr(state, f"summarize_{args.kind}")()
            if args.format == "json":
                print(json.dumps(result, indent=2, default=str))
            else:
                print(format_summary(args.kind, result))
        elif args.command == "timeline":
            import time
            path = args.output or f"timeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
            shoal.timeline(filename=path)
            print(f"wrote {path}: open it in https://ui.perfetto.dev or chrome://tracing")
        elif args.command == "memory":
            print(state.memory_summary(stats_only=args.stats_only))
        elif args.command == "logs":
            _print_logs(args, state)
        elif args.command == "doctor":
            from ..util import doctor
            options = {"straggler_factor": args.straggler_factor,
                       "straggler_min_s": args.straggler_min_s}
            if args.format == "json":
                print(json.dumps(doctor.diagnose(**options), indent=2, default=str))
            else:
                print(doctor.report(**options))
        return 0
    finally:
        shoal.shutdown()


def _print_logs(args, state) -> None:
    if args.source == "worker":
        if args.pid is None or args.id is not None:
            raise ValueError("shoal logs worker needs --pid PID (and --node-id where pids repeat)")
        source = {"pid": args.pid, "node_id": args.node_id}
    else:
        if args.id is None or args.pid is not None:
            raise ValueError(f"shoal logs {args.source} needs --id ID "
                             f"(`shoal list {args.source}s` shows them)")
        source = {f"{args.source}_id": args.id}
    for text in state.get_log(**source, err=args.err, follow=args.follow, tail=args.tail):
        print(text, end="", flush=True)


def _connect(args) -> None:
    import shoal
    if args.token_file:
        from ..cluster.auth import read_token
        # this process's own environment: how a driver is given its token
        os.environ["SHOAL_TOKEN"] = read_token(args.token_file)
    shoal.init(address=args.address or "auto", log_to_driver=False, _as_tool=True)


def parse_filter(text: str) -> tuple:
    """``key=value`` or ``key!=value`` as a state API filter."""
    for op in ("!=", "="):
        key, sep, value = text.partition(op)
        if sep and key.strip():
            return key.strip(), op, value.strip()
    raise ValueError(f"a filter is KEY=VALUE or KEY!=VALUE, got {text!r}")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}"
                        for k, v in value.items())
    text = str(value)
    return text[:40] + "..." if len(text) > 43 else text


def format_table(rows: list, columns=None) -> str:
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_summary(kind: str, result: dict) -> str:
    groups = list(result["summary"].values())
    if kind == "objects":
        rows = [{"made by": g["task"], "objects": g["total_objects"],
                 "bytes": g["total_size_bytes"],
                 "where": ", ".join(f"{k}: {v}" for k, v in sorted(g["where_counts"].items()))}
                for g in groups]
        return (f"{result['total_objects']} object(s), {result['total_size_bytes']} bytes\n"
                + format_table(rows))
    name = "func_or_class_name" if kind == "tasks" else "class_name"
    counts = "state_counts"
    rows = [{name: g[name], **({"type": g["type"]} if "type" in g else {}),
             "states": ", ".join(f"{s}: {n}" for s, n in sorted(g[counts].items()))}
            for g in groups]
    return f"{result['total']} {kind} in all\n" + format_table(rows)

