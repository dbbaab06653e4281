"""This tree's CPU per enrollment against another revision's, measured in one run (for
bench/report.py --before, and alone):

    python bench/before_after.py --before 0cd8ef2 [--rounds 3] [--duration 6]

The other revision is checked out into a temporary git worktree. Over HTTP, a local scepd of
each (one worker, its default threads) answers the same load generator at each client count,
the two alternated round by round, so that both see the machine at the same times; in
process, bench/profile_enrollment.py --stages times each stage of an enrollment with either
revision's code under it (the same script, so the same method).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "bench" / "profile_enrollment.py"
STAGE_LINE = re.compile(r"^  (\S.*?)\s{2,}([0-9.]+)(?:\s+([0-9.]+) beyond.*)?$")


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """The tree of `revision`, checked out beside this one for as long as it is used."""
    with tempfile.TemporaryDirectory(prefix="scepd-before-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def over_http(run: Callable[..., dict], before: Path, clients: list[int], rounds: int, duration: float) -> list[dict]:
    """Rows of {clients, before, after}: each the median of `rounds` runs' figures (server CPU
    per enrollment, enrollments/s), before and after alternated."""
    rows = []
    for concurrency in clients:
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(rounds):
            runs["before"].append(run(1, concurrency, duration, source=before / "src"))
            runs["after"].append(run(1, concurrency, duration))
        rows.append({"clients": concurrency, **{side: medians(results) for side, results in runs.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def medians(results: list[dict]) -> dict:
    ok = [r for r in results if r.get("server_cpu_s_per_enrollment")]
    if not ok:
        return {"cpu_ms": None, "per_s": None, "errors": sum(r.get("errors", 1) for r in results)}
    return {
        "cpu_ms": round(statistics.median(r["server_cpu_s_per_enrollment"] for r in ok) * 1000, 2),
        "per_s": round(statistics.median(r["enrollments_per_s"] for r in ok), 1),
        "bound": round(statistics.median(r["crypto_bound"]["enrollments_per_s_per_core"] for r in ok), 1),
        "errors": sum(r["errors"] for r in results),
    }


def stages(tree: Path | None, count: int = 300) -> dict[str, tuple[float, float | None]]:
    """{stage: (CPU ms, ms beyond its private-key operation)} of one enrollment in process,
    with the code of `tree` (None: this one)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
    out = subprocess.run([sys.executable, str(PROFILE), "--count", str(count), "--stages"], capture_output=True,
                         text=True, env=env, check=False)
    found = {}
    for line in out.stdout.splitlines():
        match = STAGE_LINE.match(line)
        if match:
            found[match.group(1)] = (float(match.group(2)), float(match.group(3)) if match.group(3) else None)
    if not found:
        raise SystemExit(f"no stages from {tree or ROOT}: {out.stderr[-500:]}")
    return found


def stage_table(before: dict, after: dict) -> str:
    def cell(value: tuple[float, float | None] | None) -> str:
        if value is None:
            return "-"
        return f"{value[0]:.2f}" + (f" ({value[1]:.2f})" if value[1] is not None else "")

    rows = "\n".join(f"| {stage} | {cell(before.get(stage))} | {cell(after.get(stage))} |"
                     for stage in list(dict.fromkeys([*before, *after])))
    return ("| stage (in process, CPU ms; in brackets: beyond its private-key operation) | before | after |\n"
            f"|---|---|---|\n{rows}\n")


def http_table(rows: list[dict]) -> str:
    def ratio(row: dict, key: str) -> str:
        b, a = row["before"][key], row["after"][key]
        return f"{a / b:.2f}" if a and b else "-"

    lines = "\n".join(
        f"| {r['clients']} | {r['before']['cpu_ms']} | {r['after']['cpu_ms']} | {ratio(r, 'cpu_ms')} "
        f"| {r['before']['per_s']} | {r['after']['per_s']} | {r['after']['bound']} |" for r in rows)
    return ("| clients | CPU ms/enrollment before | after | after / before | enrollments/s before | after "
            "| crypto bound /s/core |\n|---|---|---|---|---|---|---|\n" + lines + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the revision to compare with")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from report import run

    with worktree(args.before) as tree:
        rows = over_http(run, tree, [int(c) for c in args.clients.split(",")], args.rounds, args.duration)
        table = stage_table(stages(tree), stages(None))
    print(http_table(rows))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
