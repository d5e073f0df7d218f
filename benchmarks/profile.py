"""Where perdure's time goes in one workload: py-spy over ``benchmarks.runner``.

    pip install py-spy
    python -m benchmarks.profile W2 W4 --backend sqlite [--top 25] [--svg-dir out/]

Samples the runner process (py-spy ``--format raw``: collapsed stacks, GIL-idle
samples included, so waiting on fsync shows up), then prints for each workload the
frames with the most *self* time, the perdure/asyncio/sqlite frames with the most
*inclusive* time, and the share spent idle (waiting for I/O).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("site-packages/", "/perdure/", "/benchmarks/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + len(marker) :]
            if marker == "/perdure/":
                path = "perdure/" + path
            if marker == "/benchmarks/":
                path = "benchmarks/" + path
            break
    return f"{name} ({path})"


def summarize(collapsed: str, top: int) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    setup = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = [f for f in stack.split(";") if f]
        # Imports, migrations and the warm-up are not the workload.
        if any(
            "importlib._bootstrap" in f or "migrate" in f or "_warm_up" in f for f in raw_frames
        ):
            setup += count
            continue
        frames = [_frame_name(f) for f in raw_frames]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_time[leaf] += count
        by_file[leaf.rpartition(" (")[2].rstrip(")")] += count
        if "selectors" in leaf or leaf.startswith("select ("):
            idle += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    out = [
        f"samples: {total} (left out: {setup} in imports, migrations, warm-up); "
        f"idle in the selector: {idle / total:.0%}"
    ]
    out.append("\nself time by file (C calls count in the Python frame that made them):")
    for path, count in by_file.most_common(12):
        out.append(f"  {count / total:6.1%}  {path}")
    out.append("\ntop self time:")
    for frame, count in self_time.most_common(top):
        out.append(f"  {count / total:6.1%}  {frame}")
    out.append("\ntop inclusive time (perdure frames):")
    shown = 0
    for frame, count in inclusive.most_common():
        if "perdure/" in frame:
            out.append(f"  {count / total:6.1%}  {frame}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="+")
    parser.add_argument(
        "--backend", default="sqlite", choices=["sqlite", "sqlite-normal", "postgres"]
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--svg-dir", default="", help="also write flame graphs here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = None
    if args.backend == "postgres":
        from benchmarks.pg import PostgresServer

        server = PostgresServer()
        server.start()
    try:
        for workload in args.workloads:
            _profile(args, py_spy, env, workload, server)
    finally:
        if server is not None:
            server.stop()
    return 0


def _profile(
    args: argparse.Namespace, py_spy: str, env: dict[str, str], workload: str, server: Any
) -> None:
    with tempfile.TemporaryDirectory(prefix="perdure-profile-") as tmp:
        url = f"sqlite:///{tmp}/profile.db"
        if args.backend == "sqlite-normal":
            url += "?synchronous=NORMAL"
        if server is not None:
            url = server.create_database("profile")
        raw = Path(tmp) / "stacks.txt"
        runner = [
            sys.executable, "-m", "benchmarks.runner", "--system", "perdure",
            "--backend", args.backend, "--url", url, "--workload", workload,
            "--scale", repr(args.scale), "--out", f"{tmp}/out.json",
        ]  # fmt: skip
        subprocess.run(
            [py_spy, "record", "--idle", "--rate", str(args.rate), "--format", "raw",
             "-o", str(raw), "--", *runner],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        print(f"== {workload} on {args.backend} ==")
        print(Path(f"{tmp}/out.json").read_text())
        print(summarize(raw.read_text(), args.top))
        if args.svg_dir:
            Path(args.svg_dir).mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [py_spy, "record", "--idle", "--rate", str(args.rate), "-o",
                 str(Path(args.svg_dir) / f"{workload}-{args.backend}.svg"), "--", *runner],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
