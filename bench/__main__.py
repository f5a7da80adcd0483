"""``python -m bench [NAME ...] [--quick]``: run benchmarks by name (default: all)."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = [
    "coordinator",
    "suggest",
    "dashboard",
    "evaluator",
    "search",
    "pairs",
    "blend",
    "asha",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: {BENCHMARKS})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}")
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        module.run(quick=args.quick, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
