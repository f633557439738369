"""Benchmark shoal against Ray (and multiprocessing.Pool where it applies).

    python bench/run.py [--reps N] [--batches B] [--only ROWNAME ...]
                        [--systems shoal,ray,mp] [--timeout S]
                        [--markdown FILE] [--json FILE]

Every measurement runs in a fresh subprocess (bench/workloads.py), one per
system per batch, so two runtimes never share a process. Batches alternate
the systems (A B, then B A, ...). Each subprocess starts the runtime with
num_cpus=2, warms the workload up, then takes its share of the N repetitions.
"init to first result" runs one fresh process per repetition, after one
untimed process per system to warm the OS caches.

The table gives the median, the spread (min-max) and the count of samples;
"speedup" is how many times better shoal is than Ray (>1: shoal is better),
whatever the direction of the unit. A subprocess that fails or passes
--timeout is recorded as error/timeout and that system's later batches of that
workload are skipped; the run carries on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from workloads import RESULT_PREFIX, WORKLOADS  # noqa: E402

SYSTEMS = ("shoal", "ray", "mp")
LABELS = {"shoal": "shoal", "ray": "Ray", "mp": "mp.Pool(2)"}


# ---------------------------------------------------------------- subprocesses


def child_env() -> dict:
    env = dict(os.environ)
    # The working tree's shoal comes first, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here anyway
    env["SHOAL_INCLUDE_DASHBOARD"] = "0"   # as ray.init(include_dashboard=False): runtime only
    env["PYTHONUNBUFFERED"] = "1"
    return env


def descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def kill_tree(proc: subprocess.Popen, extra_pids: list[int]) -> None:
    """Kill what this subprocess started: its process group, then any
    descendant that left the group (runtimes daemonize their helpers)."""
    pids = set(extra_pids) | set(descendants(proc.pid))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_child(system: str, workload: str, reps: int, timeout: float,
              script: Path | None = None, prefix: list[str] | None = None,
              extra_args: list[str] | None = None, env: dict | None = None) -> dict:
    """One fresh process: returns the workload's JSON, or {"error": ...}.

    ``script`` (default bench/workloads.py) takes --system/--workload/--reps
    (and ``extra_args``) and prints a BENCH_RESULT line; ``prefix`` goes
    before the interpreter (e.g. ``ip netns exec NS``, which execs it)."""
    cmd = [*(prefix or []), sys.executable, str(script or BENCH / "workloads.py"),
           "--system", system, "--workload", workload, "--reps", str(reps), *(extra_args or [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    seen: list[int] = []  # descendants seen while it ran, to clean up after a hang
    out = err = ""
    while True:
        try:
            out, err = proc.communicate(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            seen = list(set(seen) | set(descendants(proc.pid)))
            if time.monotonic() >= deadline:
                kill_tree(proc, seen)
                out, err = proc.communicate()
                return {"error": "timeout", "detail": f"no result after {timeout:g} s",
                        "stderr": err}
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    lines = [l for l in (err or "").strip().splitlines() if l.strip()]
    return {"error": "error", "detail": lines[-1] if lines else f"exit code {proc.returncode}",
            "stderr": err}


# ---------------------------------------------------------------- measuring


def split_reps(reps: int, batches: int) -> list[int]:
    batches = max(1, min(batches, reps))
    return [reps // batches + (i < reps % batches) for i in range(batches)]


def measure_workload(name: str, systems: list[str], reps: int, batches: int,
                     timeout: float, log, workloads: dict | None = None,
                     runner=None, labels: dict | None = None) -> dict:
    """Alternate ``systems`` over fresh subprocesses: ``runner(system, name,
    reps, timeout)`` (default run_child on bench/workloads.py)."""
    w = (workloads or WORKLOADS)[name]
    runner = runner or run_child
    labels = labels or LABELS
    systems = [s for s in systems if w.runs_on(s)]
    res = {s: {"samples": [], "error": None, "detail": None} for s in systems}

    if w.fresh_process:
        plan = [1] * reps
        for s in systems:  # untimed process: warm the page cache and imports
            log(f"  {labels[s]:<10} warm-up process")
            r = runner(s, name, 1, timeout)
            if "error" in r:  # it would fail the same way: don't wait on it again
                res[s]["error"], res[s]["detail"] = r["error"], r["detail"]
                log(f"  {labels[s]:<10} warm-up: {r['error']}: {r['detail']}")
    else:
        plan = split_reps(reps, w.batches or batches)

    for b, n in enumerate(plan):
        order = systems if b % 2 == 0 else systems[::-1]
        for s in order:
            if res[s]["error"]:
                continue
            t0 = time.monotonic()
            r = runner(s, name, n, timeout)
            took = time.monotonic() - t0
            if "error" in r:
                res[s]["error"], res[s]["detail"] = r["error"], r["detail"]
                log(f"  {labels[s]:<10} batch {b + 1}/{len(plan)}: {r['error']}: {r['detail']}")
            else:
                res[s]["samples"] += r["samples"]
                res[s]["version"] = r.get("extra", {}).get("version")
                res[s].setdefault("extra", []).append(r.get("extra", {}))
                log(f"  {labels[s]:<10} batch {b + 1}/{len(plan)}: "
                    + ", ".join(f"{x:.4g}" for x in r["samples"]) + f" {w.unit}  ({took:.1f} s)")
    return res


# ---------------------------------------------------------------- reporting


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def cell(r: dict | None, unit: str) -> str:
    if r is None:
        return "—"
    if r["error"] and not r["samples"]:
        return r["error"]
    xs = r["samples"]
    if not xs:
        return "—"
    text = f"{fmt(statistics.median(xs))} {unit} [{fmt(min(xs))}–{fmt(max(xs))}] n={len(xs)}"
    if r["error"]:
        text += f" (then {r['error']})"
    return text


def median(r: dict | None):
    return statistics.median(r["samples"]) if r and r["samples"] else None


def table_rows(results: dict, systems: list[str], workloads: dict | None = None,
               labels: dict | None = None) -> tuple[list[str], list[list[str]]]:
    labels = labels or LABELS
    header = ["workload"] + [labels[s] for s in systems]
    if "shoal" in systems and "ray" in systems:
        header.append("speedup vs Ray (>1: shoal better)")
    header += ["target (shoal)", "met?"]
    rows = []
    for name, res in results.items():
        w = (workloads or WORKLOADS)[name]
        row = [name] + [cell(res.get(s), w.unit) for s in systems]
        shoal, ray = median(res.get("shoal")), median(res.get("ray"))
        if "shoal" in systems and "ray" in systems:
            if shoal and ray:
                row.append(f"{(shoal / ray if w.higher_is_better else ray / shoal):.2f}x")
            else:
                row.append("—")
        row.append(w.target_text)
        if w.target is None or shoal is None:
            row.append("—")
        elif w.relative_to:
            ref = median(res.get(w.relative_to[0]))
            row.append("—" if not ref else
                       f"{'yes' if w.meets(shoal, ref) else 'no'} ({shoal / ref:.2f}×)")
        else:
            row.append("yes" if w.meets(shoal) else "no")
        rows.append(row)
    return header, rows


def text_table(header, rows) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(wd) for c, wd in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), "-+-".join("-" * wd for wd in widths)]
                     + [line(r) for r in rows])


def markdown_table(header, rows) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, header)) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def shoal_version() -> str:
    cmd = [sys.executable, "-c", "import shoal; print(getattr(shoal, '__version__', ''))"]
    try:
        p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "import timed out"
    if p.returncode != 0:
        return "not importable"
    if p.stdout.strip():
        return p.stdout.strip()
    try:  # no __version__: say what the working tree's pyproject.toml says
        import tomllib

        with open(REPO / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"] + " (pyproject; no __version__)"
    except Exception:
        return "unknown version"


def machine_line() -> str:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l for l in f if l.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {mem} memory, "
            f"Python {platform.python_version()} on {platform.system()} {platform.release()}; "
            f"shoal {shoal_version()}, ray {version_of('ray')}, numpy {version_of('numpy')}")


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark shoal against Ray, each measurement in a fresh process.")
    p.add_argument("--reps", type=int, default=5,
                   help="timed repetitions per system and workload (default 5)")
    p.add_argument("--batches", type=int, default=2,
                   help="fresh subprocesses per system the repetitions are split over, "
                        "alternating systems (default 2; init always uses one per rep)")
    p.add_argument("--only", nargs="+", metavar="ROWNAME",
                   help="run only these rows (exact names, or a unique substring)")
    p.add_argument("--systems", default="shoal,ray,mp",
                   help="comma-separated, from shoal,ray,mp (default all; mp = "
                        "multiprocessing.Pool(2), only on the rows where it applies)")
    p.add_argument("--timeout", type=float, default=180,
                   help="seconds allowed to one subprocess before it counts as timeout")
    p.add_argument("--markdown", metavar="FILE", help="write the table as markdown to FILE")
    p.add_argument("--json", metavar="FILE", help="write all samples as JSON to FILE")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    return check_args(p, p.parse_args(argv), SYSTEMS, WORKLOADS)


def check_args(p, args, systems, workloads: dict):
    """--systems as a list of names from ``systems``, --reps at least 1,
    --only (exact names or unique substrings) as ``args.names``, the rows
    of ``workloads`` to run; ``p.error`` otherwise."""
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in args.systems if s not in systems]
    if bad or not args.systems:
        p.error(f"--systems takes names from {','.join(systems)}, got {bad or 'nothing'}")
    if args.reps < 1:
        p.error("--reps must be at least 1")

    names = list(workloads)
    if args.only:
        chosen = []
        for want in args.only:
            hits = [n for n in names if n == want] or [n for n in names if want.lower() in n.lower()]
            if len(hits) != 1:
                p.error(f"--only {want!r} matches {hits or 'no row'}; rows: {names}")
            chosen += [h for h in hits if h not in chosen]
        names = [n for n in names if n in chosen]
    args.names = names
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for n, w in WORKLOADS.items():
            print(f"{n:<30} {w.unit:<8} target {w.target_text}")
        return 0

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    machine = machine_line()
    log(f"machine: {machine}")
    log(f"systems: {', '.join(LABELS[s] for s in args.systems)}; reps {args.reps}; "
        f"timeout {args.timeout:g} s per subprocess")

    results = {}
    started = time.monotonic()
    for name in args.names:
        log(f"{name}:")
        results[name] = measure_workload(name, args.systems, args.reps, args.batches,
                                         args.timeout, log)
    log(f"done in {time.monotonic() - started:.0f} s\n")

    header, rows = table_rows(results, args.systems)
    report(args, results, header, rows, machine, failures(results), "Failures",
           f"Median [min–max] over n repetitions, each system in its own fresh processes "
           f"(bench/run.py --reps {args.reps} --batches {args.batches}), "
           f"`ray.init(num_cpus=2)` for both. Speedup > 1 means shoal is better.", log)
    return 0


def failures(results: dict, labels: dict = LABELS) -> list[str]:
    """One line per cell that failed: the system, the row, the error."""
    return [f"{labels[s]} on {n!r}: {r['error']}: {r['detail']}"
            for n, res in results.items() for s, r in res.items() if r["error"]]


def report(args, results: dict, header, rows, machine: str, notes: list[str], title: str,
           method: str, log) -> None:
    """Print the table and ``notes`` (under ``title``); write --markdown (the
    table, the machine, ``method``: how it was measured, and the notes) and
    --json (the raw results)."""
    print(text_table(header, rows))
    if notes:
        print(f"\n{title.lower()}:\n" + "\n".join("  " + n for n in notes))
    if args.markdown:
        md = [markdown_table(header, rows), "",
              f"Machine: {machine}.", "",
              method]
        if notes:
            md += ["", f"{title}:", ""] + [f"- {n}" for n in notes]
        Path(args.markdown).write_text("\n".join(md) + "\n")
        log(f"wrote {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine, "reps": args.reps, "batches": args.batches,
             "results": results}, indent=1, ensure_ascii=False))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
