"""The ``shoal`` command line. ``shoal demo`` for now; the cluster issue adds
``start``, ``stop`` and ``status``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: distributed Python for AI")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short showcase on a local cluster")
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs to use (default: all)")
    demo.add_argument("--samples", type=int, default=20_000_000,
                      help="Monte Carlo samples in total (default: 20M)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(num_cpus=args.num_cpus, samples=args.samples)
    return 2


if __name__ == "__main__":
    sys.exit(main())
