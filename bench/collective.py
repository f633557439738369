"""Allreduce bandwidth on one machine: shoal.collective's backends against
torch.distributed gloo, with and without shoal, and Ray's.

    python bench/collective.py [--reps N] [--only SIZE ...] [--members 2,4]
                               [--systems shm,ring,shoal-gloo,torch,ray,copy]
                               [--timeout S] [--wait-quiet S] [--write]

Each system runs in a fresh subprocess per repetition (this file with
--child, started by bench/run.py's runner), the order alternating between
repetitions. A subprocess measures every size for 2, then 4 members:

  shm, ring, shoal-gloo  shoal.init(num_cpus=2); one actor (num_cpus=0) per
                 member; init_collective_group(world, rank, backend);
                 allreduce(array) (shoal-gloo: a torch tensor on the array).
  torch          plain torch.distributed, no shoal: one process per member
                 (multiprocessing, spawn), init_process_group("gloo",
                 init_method="tcp://127.0.0.1:PORT"), dist.all_reduce(tensor).
  ray            ray.init(num_cpus=2); one actor (num_cpus=0) per member;
                 ray.util.collective.init_collective_group(backend="gloo")
                 (Ray 2.60 wraps torch.distributed's gloo: no pygloo needed).
  copy           the memory-bandwidth ceiling: np.copyto of 256 MB into an
                 already-touched array, in one process.

Per size, each member allocates a float32 array of that many bytes and
checks one allreduce's result; a calibration run picks N so that N
allreduces take about TARGET_S (fewer for 256 MB); then every member runs
one untimed allreduce (lining the members up) and times N more. The
sample is the algorithm bandwidth, bytes / (slowest member's time / N).
Cells are median [min-max] over the repetitions.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import date
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import cluster  # noqa: E402  (bench/cluster.py: wait_quiet, sweep)
import run as common  # noqa: E402  (bench/run.py: runner, cells, tables, machine line)
import numpy as np  # noqa: E402

from workloads import MB, now, print_result, ray_init  # noqa: E402

SYSTEMS = ("shm", "ring", "shoal-gloo", "torch", "ray", "copy")
LABELS = {"shm": "shm", "ring": "ring", "shoal-gloo": "shoal-gloo", "torch": "torch gloo",
          "ray": "Ray gloo", "copy": "np.copyto"}
SIZES = {"1 KB": 1000, "64 KB": 64_000, "1 MB": MB, "16 MB": 16 * MB, "64 MB": 64 * MB,
         "256 MB": 256 * MB}
TARGET_S = 0.6          # time of one timed loop
BIG_TARGET_S = 0.25     # ... for 256 MB (at ~1 GB/s: one allreduce)
MAX_N = 20_000
GROUP = "bench"
SECTION = "## Collectives: allreduce bandwidth"
DOC = BENCH.parent / "docs" / "benchmarks.md"


# ================================================================ members


class Member:
    """One member of a group: shoal's or Ray's actor, or a plain process."""

    def __init__(self, system: str, world: int, rank: int, address: str | None = None):
        self.system, self.world, self.rank, self.address = system, world, rank, address
        self.x, self.nbytes = None, 0

    def join(self) -> None:
        self.wrap = lambda a: a
        if self.system in ("shm", "ring", "shoal-gloo"):
            from shoal import collective
            backend = "gloo" if self.system == "shoal-gloo" else self.system
            collective.init_collective_group(self.world, self.rank, backend, GROUP)
            self.allreduce = lambda x: collective.allreduce(x, GROUP)
        elif self.system == "ray":
            from ray.util import collective
            collective.init_collective_group(self.world, self.rank, "gloo", "default")
            self.allreduce = lambda x: collective.allreduce(x, "default")
        else:
            import torch.distributed as dist
            dist.init_process_group("gloo", init_method=self.address, world_size=self.world,
                                    rank=self.rank)
            self.allreduce = dist.all_reduce
        if self.system not in ("shm", "ring"):
            import torch
            self.wrap = torch.from_numpy

    def timed(self, nbytes: int, warmup: int, n: int) -> float:
        """Seconds for ``n`` allreduces of ``nbytes``, after ``warmup``."""
        if nbytes != self.nbytes:          # a new size: check one result first
            self.x = None
            a = np.full(nbytes // 4, self.rank + 1, np.float32)
            x = self.wrap(a)
            self.allreduce(x)
            want = self.world * (self.world + 1) / 2
            assert a[0] == want and a[-1] == want, (a[0], a[-1], want)
            a.fill(0)                      # stays 0: no overflow, no denormals
            self.x, self.nbytes = x, nbytes
        for _ in range(warmup):
            self.allreduce(self.x)
        t0 = now()
        for _ in range(n):
            self.allreduce(self.x)
        return now() - t0


def serve(conn, system, world, rank, address) -> None:
    """A plain torch member: joins, then runs what the pipe asks."""
    m = Member(system, world, rank, address)
    m.join()
    conn.send("joined")
    while (job := conn.recv()) is not None:
        conn.send(m.timed(*job))
    import torch.distributed as dist
    dist.destroy_process_group()


class ActorGroup:
    """``world`` members as actors (num_cpus=0) of shoal or Ray."""

    def __init__(self, ray, system: str, world: int):
        self.ray = ray
        cls = ray.remote(num_cpus=0)(Member)
        self.actors = [cls.remote(system, world, r) for r in range(world)]
        ray.get([a.join.remote() for a in self.actors], timeout=120)

    def timed(self, *job) -> float:
        return max(self.ray.get([a.timed.remote(*job) for a in self.actors], timeout=300))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class ProcessGroup:
    """``world`` plain processes running torch.distributed gloo, no shoal."""

    def __init__(self, system: str, world: int):
        import multiprocessing as mp
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for r in range(world):
            mine, theirs = ctx.Pipe()
            self.procs.append(ctx.Process(target=serve, args=(theirs, system, world, r, address),
                                          daemon=True))
            self.procs[-1].start()
            self.conns.append(mine)
        for c in self.conns:
            if not c.poll(120):
                raise TimeoutError("torch.distributed gloo: the members did not join")
            c.recv()

    def timed(self, *job) -> float:
        for c in self.conns:
            c.send(job)
        return max(c.recv() for c in self.conns)

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(30)


def algbw(group, nbytes: int) -> float:
    """GB/s of one timed loop; N calibrated so that it takes about TARGET_S."""
    group.timed(nbytes, 1, 0)                 # allocate, check, warm up
    n = 1
    while (t := group.timed(nbytes, 0, n)) < 0.05 and n < MAX_N:
        n *= 8
    target = BIG_TARGET_S if nbytes >= 256 * MB else TARGET_S
    n = max(1, min(MAX_N, round(target * n / t)))
    return nbytes * n / group.timed(nbytes, 1, n) / 1e9


def copy_bandwidth() -> float:
    src = np.full(256 * MB // 4, 1, np.float32)
    dst = np.zeros_like(src)
    np.copyto(dst, src)                       # touch every page first
    n = 8
    t0 = now()
    for _ in range(n):
        np.copyto(dst, src)
    return src.nbytes * n / (now() - t0) / 1e9


def child(system: str, sizes: list[str], members: list[int]) -> dict:
    if system == "copy":
        return {"samples": {"copy": copy_bandwidth()}}
    samples = {}
    ray = None
    if system in ("shm", "ring", "shoal-gloo"):
        import shoal as ray
        ray.init(num_cpus=2)
    elif system == "ray":
        import ray
        ray_init(ray)
    try:
        for world in members:
            group = ActorGroup(ray, system, world) if ray else ProcessGroup(system, world)
            try:
                for size in sizes:
                    samples[f"{world} {size}"] = algbw(group, SIZES[size])
            finally:
                group.close()
    finally:
        if ray:
            ray.shutdown()
    return {"samples": samples}


# ================================================================ driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Allreduce bandwidth: shoal.collective against "
                                            "torch.distributed gloo and Ray.")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", nargs="+", metavar="SIZE", help=f"sizes, from {', '.join(SIZES)}")
    p.add_argument("--members", default="2,4", help="group sizes (default 2,4)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--timeout", type=float, default=300, help="seconds per subprocess")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="first wait up to S seconds for the 1-minute load average to "
                        "drop below --quiet-load")
    p.add_argument("--quiet-load", type=float, default=1.0)
    p.add_argument("--write", action="store_true",
                   help=f"replace (or add) the section {SECTION!r} in docs/benchmarks.md")
    # the child side (one measurement process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.members = [int(m) for m in args.members.split(",")]
    if args.child:
        return args
    return common.check_args(p, args, SYSTEMS, SIZES)


def measure_all(args, log) -> tuple[dict, list[str]]:
    """results[system] = {"samples": {key: [GB/s, ...]}, "error", "detail"}."""
    run_id = uuid.uuid4().hex
    env = common.child_env()
    env[cluster.RUN_ENV] = run_id
    extra = ["--child", "--members", ",".join(map(str, args.members))]
    results = {s: {"samples": {}, "error": None, "detail": None} for s in args.systems}
    notes = []
    for rep in range(args.reps):
        for s in args.systems if rep % 2 == 0 else args.systems[::-1]:
            res = results[s]
            if res["error"]:
                continue
            t0 = time.monotonic()
            r = common.run_child(s, ",".join(args.names), 1, args.timeout,
                                 script=Path(__file__), extra_args=extra, env=env)
            if cluster.sweep(run_id, log):
                notes.append(f"{LABELS[s]}: killed leftover processes after rep {rep + 1}")
            took = time.monotonic() - t0
            if "error" in r:
                res["error"], res["detail"] = r["error"], r["detail"]
                log(f"  {LABELS[s]:<10} rep {rep + 1}: {r['error']}: {r['detail']}")
                notes.append(f"{LABELS[s]}: {r['error']}: {r['detail']}")
                continue
            for key, x in r["samples"].items():
                res["samples"].setdefault(key, []).append(x)
            log(f"  {LABELS[s]:<10} rep {rep + 1}: " + ", ".join(
                f"{k} {x:.3g}" for k, x in r["samples"].items()) + f" GB/s  ({took:.1f} s)")
    return results, notes


def table(results: dict, args) -> tuple[list[str], list[list[str]]]:
    def one(s, key):
        r = results.get(s)
        return r and {"samples": r["samples"].get(key, []), "error": r["error"]}

    shown = [s for s in args.systems if s != "copy"]
    header = ["size", "members"] + [f"{LABELS[s]} GB/s" for s in shown]
    if "shm" in shown and "torch" in shown:
        header.append("shm / torch gloo")
    rows = []
    for world in args.members:
        for size in args.names:
            key = f"{world} {size}"
            row = [size, str(world)]
            row += [common.cell(one(s, key), "").replace("  [", " [") for s in shown]
            if "shm / torch gloo" in header:
                shm, gloo = common.median(one("shm", key)), common.median(one("torch", key))
                row.append(f"{shm / gloo:.2f}x" if shm and gloo else "—")
            rows.append(row)
    return header, rows


def copy_line(results: dict) -> str:
    xs = results.get("copy", {}).get("samples", {}).get("copy")
    if not xs:
        return ""
    c = statistics.median(xs)
    return (f"Memory-bandwidth ceiling: `np.copyto` of a 256 MB float32 array into an "
            f"already-touched one, in one process: {common.fmt(c)} GB/s "
            f"[{common.fmt(min(xs))}–{common.fmt(max(xs))}] n={len(xs)}. The shm backend "
            f"moves each byte about 4 times per member (the input into its slot, the slots "
            f"through the reduction, the reduced parts out of the slots: about 5 bytes read "
            f"or written per array byte, where a copy does 2), so once the array is out of "
            f"cache, with one member per core, about {common.fmt(c / 4)} GB/s (a quarter of "
            f"the copy figure) is what it can reach; with 4 members on 2 cores, half that.")


def code_version() -> str:
    """The commit the children run, and whether src/ differs from it."""
    git = lambda *a: subprocess.run(["git", *a], cwd=BENCH.parent, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "src")
    return git("rev-parse", "--short", "HEAD") + (" with local changes under src/" if dirty else "")


def section(argv, took: float, load: str, machine: str, code: str, header, rows,
            ceiling: str, notes: list[str]) -> str:
    """The docs/benchmarks.md section of this run."""
    command = shlex.join(["python", "bench/collective.py", *argv])
    method = (f"Algorithm bandwidth (array bytes / time per allreduce of float32, sum), "
              f"median [min–max] over n repetitions, each system in its own fresh processes "
              f"per repetition, alternating; the time is the slowest member's for a loop of "
              f"N allreduces (N for ~{TARGET_S:g} s, ~{BIG_TARGET_S:g} s at 256 MB) after an "
              f"untimed one. Members are actors with num_cpus=0 on `shoal.init(num_cpus=2)` "
              f"/ `ray.init(num_cpus=2)`, or plain processes for torch gloo "
              f"(`init_process_group(\"gloo\", init_method=\"tcp://127.0.0.1:PORT\")`). "
              f"shoal-gloo, torch gloo and Ray gloo reduce a torch tensor on the array; Ray "
              f"gloo is `ray.util.collective` with backend \"gloo\", which Ray "
              f"{common.version_of('ray')} runs on torch.distributed (no pygloo needed). "
              f"Sizes are decimal (1 MB = 10^6 bytes).")
    wrap = lambda t: textwrap.fill(t, 76, break_long_words=False,  # noqa: E731
                                   break_on_hyphens=False)
    text = [SECTION, "",
            wrap(f"`{command}`, run {date.today()} on commit {code}; it took {took:.0f} s; "
                 f"{load}."), "",
            common.markdown_table(header, rows), "",
            f"Machine: {machine}.", "",
            wrap(method), "",
            wrap(ceiling)]
    if notes:
        text += ["", "Failures and notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(text) + "\n"


def write_section(text: str) -> None:
    """Replace the section's text up to its next heading (a hand-written
    "###" below it stays), or add the section at the end."""
    doc = DOC.read_text()
    start = doc.find(f"\n{SECTION}\n")
    if start < 0:
        DOC.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    nxt = re.compile(r"^#", re.M).search(doc, start + len(SECTION) + 2)
    end = nxt.start() if nxt else len(doc)
    DOC.write_text(doc[:start + 1] + text + ("\n" if nxt else "") + doc[end:])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print_result(lambda: child(args.system, args.workload.split(","), args.members))
        sys.stdout.flush()
        os._exit(0)      # skip runtimes' atexit hooks: their processes are gone already
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.wait_quiet > 0:
        cluster.wait_quiet(args.wait_quiet, args.quiet_load, log)
    machine = common.machine_line() + f", torch {common.version_of('torch')}"
    load0 = os.getloadavg()
    code = code_version()
    log(f"machine: {machine}; code: {code}")
    started = time.monotonic()
    results, notes = measure_all(args, log)
    if code_version() != code:
        notes.append(f"the code changed during the run: {code} at the start, "
                     f"{code_version()} at the end")
    took = time.monotonic() - started
    load = (f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load0)} at the start, "
            f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    log(f"done in {took:.0f} s; {load}\n")

    header, rows = table(results, args)
    print(common.text_table(header, rows))
    print(copy_line(results))
    for n in notes:
        print("  " + n)
    if args.write:
        write_section(section(argv or sys.argv[1:], took, load, machine, code, header, rows,
                              copy_line(results), notes))
        log(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
