"""One measurement in a process of its own: ``python -m benchmarks.runner ...``.

The suite (``python -m benchmarks``) runs every (system, backend, workload) here, in a
fresh process, so that memory figures, thread pools and the peers' global state of one
measurement do not leak into the next. The figures go to ``--out`` as JSON; lines
``@@progress DONE TOTAL WHAT`` on stdout feed the progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from typing import Any

from benchmarks.spec import Sizes


async def _run(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    if args.system == "perdure":
        from benchmarks.systems import perdure_bench as module
    elif args.system == "dbos":
        from benchmarks.systems import dbos_bench as module  # type: ignore[no-redef]
    elif args.system == "temporal":
        from benchmarks.systems import temporal_bench as module  # type: ignore[no-redef]
    else:
        raise SystemExit(f"unknown system {args.system!r}")
    return await module.run(
        args.workload,
        args.url,
        sizes,
        backend=args.backend,
        temporal_bin=args.temporal_bin,
        temporal_db_file=args.temporal_db_file,
    )


def _limits(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    from benchmarks import limits

    if args.backend.startswith("sqlite"):
        from benchmarks.wal import sqlite_path

        path = sqlite_path(args.url)
        sync = "NORMAL" if args.backend == "sqlite-normal" else "FULL"
        return limits.sqlite_limits(path, sizes, sync)
    from pathlib import Path

    return limits.postgres_limits(args.url, sizes, Path(args.pgbench) if args.pgbench else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pgbench", default="")
    parser.add_argument("--temporal-bin", default="")
    parser.add_argument("--temporal-db-file", action="store_true")
    parser.add_argument("--w6-workflows", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sizes = Sizes.scaled(args.scale)
    if args.w6_workflows and args.w6_workflows < sizes.w6_workflows:
        sizes = dataclasses.replace(sizes, w6_workflows=args.w6_workflows)
    started = time.perf_counter()
    metrics = _limits(args, sizes) if args.system == "limit" else asyncio.run(_run(args, sizes))
    metrics["wall_s"] = time.perf_counter() - started
    with open(args.out, "w") as f:
        json.dump({"metrics": metrics}, f)


if __name__ == "__main__":
    main()
