"""A/B of the in-process CPU per enrollment: this working tree against another revision, in one run.

    python bench/ab.py [--base main] [--rounds 5] [--count 300]

The base revision is checked out into a temporary git worktree; each side runs its own
bench/profile_enrollment.py with its own source on PYTHONPATH, alternately, `--rounds` times,
so that both see the same machine at the same times (a loaded or throttled machine slows both
alike). Printed: each round, the medians, and this tree's CPU as a fraction of the base's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from before_after import worktree  # noqa: E402

FIGURE = re.compile(r"([0-9.]+) ms of CPU per enrollment in-process.*private-key operations: ([0-9.]+) ms")


def measure(tree: Path, count: int) -> tuple[float, float]:
    """(CPU ms per enrollment, of which private-key operations) for the code in `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, str(tree / "bench" / "profile_enrollment.py"), "--count", str(count)],
                         capture_output=True, text=True, env=env, check=False)
    found = FIGURE.search(out.stdout + out.stderr)
    if not found:
        raise SystemExit(f"no figure from {tree}: {out.stderr[-500:]}")
    return float(found.group(1)), float(found.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=300, help="enrollments per measurement")
    args = parser.parse_args()
    with worktree(args.base) as base:
        figures: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
        for round_ in range(1, args.rounds + 1):
            for side, tree in (("base", base), ("this", ROOT)):
                figures[side].append(measure(tree, args.count))
            print(f"round {round_}: base {figures['base'][-1][0]:.2f} ms, this tree {figures['this'][-1][0]:.2f} ms",
                  flush=True)
    medians = {side: statistics.median(cpu for cpu, _ in rows) for side, rows in figures.items()}
    keys = {side: statistics.median(op for _, op in rows) for side, rows in figures.items()}
    print(f"base ({args.base}): {medians['base']:.2f} ms per enrollment (private-key operations {keys['base']:.2f})")
    print(f"this tree: {medians['this']:.2f} ms per enrollment (private-key operations {keys['this']:.2f})")
    print(f"this tree / base: {medians['this'] / medians['base']:.3f}; beyond the private-key operations: "
          f"{(medians['this'] - keys['this']) / (medians['base'] - keys['base']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
