"""Run the benchmark over workers x concurrency and write docs/performance.md with a plot.

    python bench/report.py [--duration 8]   (make bench-report)
    python bench/report.py --against http://127.0.0.1:9001/scep --against-challenge secret
        (make bench-report ARGS="--against URL ..."): the same requests against another SCEP
        server at each client count, beside scepd's one worker, in the same run
    python bench/report.py --results saved.jsonl   (the same report from a run's printed lines)

Each point is the median of --rounds runs. Beside this tree, the revision --before (main when
the performance work began) is measured in the same run, alternated with it: over HTTP at
1 and 8 clients, and in process stage by stage (bench/before_after.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import before_after  # noqa: E402
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"


def run(workers: int, concurrency: int, duration: float, threads: int = 0, url: str = "", challenge: str = "",
        source: Path | None = None, cpu_affinity: str = "") -> dict:
    command = [sys.executable, str(ROOT / "bench" / "scepbench.py"), "--workers", str(workers), "--concurrency",
               str(concurrency), "--duration", str(duration), "--threads", str(threads), "--json-only"]
    if url:  # another server: the same load generator and requests, its URL and challenge
        command += ["--url", url] + (["--challenge", challenge] if challenge else [])
    if source is not None:  # another revision's scepd
        command += ["--source", str(source)]
    if cpu_affinity:
        command += ["--cpu-affinity", cpu_affinity]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    return json.loads(line)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def plot(results: list[dict], bound: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for workers in sorted({r["workers"] for r in results}):
        rows = sorted((r for r in results if r["workers"] == workers), key=lambda r: r["concurrency"])
        ax.plot([r["concurrency"] for r in rows], [r["enrollments_per_s"] for r in rows], marker="o", label=f"{workers} worker(s)")
    ax.axhline(bound, linestyle="--", color="grey", label=f"crypto bound, 1 core (median {bound:.0f}/s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("enrollments per second")
    ax.set_title("scepd PKCSReq throughput (RSA-2048 CA and RA, SQLite)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def against_table(results: list[dict], others: list[dict]) -> str:
    """scepd's one worker beside the other server, client count by client count."""
    if not others:
        return ""
    ours = {r["concurrency"]: r for r in results if r["workers"] == 1}
    rows = "\n".join(
        f"| {o['concurrency']} | {ours[o['concurrency']]['enrollments_per_s'] if o['concurrency'] in ours else '-'} "
        f"| {o['enrollments_per_s']} | {o['errors']} | "
        + (f"{ours[o['concurrency']]['enrollments_per_s'] / o['enrollments_per_s']:.2f}" if o['concurrency'] in ours
           and o['enrollments_per_s'] else "-") + " |"
        for o in sorted(others, key=lambda o: o["concurrency"]))
    return (f"\nAgainst {others[0]['against']} (the same load generator and requests, one run):\n\n"
            "| clients | scepd, 1 worker, enrollments/s | other, enrollments/s | other's errors | scepd / other |\n"
            f"|---|---|---|---|---|\n{rows}\n")


# main when the performance issue was taken up: what "before" means in docs/performance.md.
BEFORE = "0cd8ef2"


def compare(revision: str, duration: float) -> dict:
    """`revision` against this tree, in this run: over HTTP at 1 and 8 clients, and in process
    stage by stage (bench/before_after.py)."""
    with before_after.worktree(revision) as tree:
        rows = before_after.over_http(run, tree, [1, 8], 3, duration)
        pinned = [{"clients": c, **before_after.medians([run(1, c, duration, cpu_affinity="auto") for _ in range(3)])}
                  for c in (1, 8)]
        return {"before_after": rows, "revision": revision, "pinned": pinned,
                "stages": {"before": before_after.stages(tree), "after": before_after.stages(None)}}


def compared_text(compared: dict) -> str:
    if not compared:
        return ""
    return (f"\nBefore and after: {compared['revision']} (main when the performance work began) and this tree, one "
            "worker with its default threads, alternated three times at each client count (medians):\n\n"
            + before_after.http_table(compared["before_after"])
            + "\nThis tree with `[server] cpu_affinity = \"auto\"` (the worker and its threads on one CPU), three runs each "
            "(medians): " + "; ".join(f"{p['clients']} client(s): {p['cpu_ms']} ms of CPU per enrollment, {p['per_s']}/s"
                                        for p in compared.get("pinned", ())) + ".\n"
            + "\nWhere an enrollment's time goes, in process (`bench/profile_enrollment.py --stages`, the same "
            "requests through the SCEP service without HTTP), with either revision's code:\n\n"
            + before_after.stage_table(compared["stages"]["before"], compared["stages"]["after"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=3, help="runs per point; the one of median throughput is shown")
    parser.add_argument("--against", default="", help="another SCEP server's URL, measured at each client count")
    parser.add_argument("--against-challenge", default="", help="its challenge password")
    parser.add_argument("--before", default=BEFORE,
                        help=f"a revision to measure beside this tree in the same run (default {BEFORE}; '' for none)")
    parser.add_argument("--results", type=Path,
                        help="write the report from the JSON lines a previous run printed, without measuring")
    args = parser.parse_args()
    saved_other: list[dict] = []
    compared: dict = {}
    if args.results:
        saved = [json.loads(line) for line in args.results.read_text().splitlines() if line.startswith("{")]
        compared = next((r for r in saved if "before_after" in r), {})
        saved = [r for r in saved if "before_after" not in r]
        saved_other = [r for r in saved if r.get("against")]
        results = [r for r in saved if r.get("threads") == "auto" and not r.get("against")]
        scaling = [r for r in saved if r.get("threads") == 1 and not r.get("against")]
    else:
        results = []
        for workers in (int(w) for w in args.workers.split(",")):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                # This machine's speed drifts: each point is the run of median throughput of
                # --rounds, not one run's luck.
                rounds = sorted((run(workers, concurrency, args.duration) for _ in range(args.rounds)),
                                key=lambda r: r.get("enrollments_per_s", 0))
                result = rounds[len(rounds) // 2]
                result["rounds"] = [r.get("enrollments_per_s") for r in rounds]
                print(json.dumps(result), flush=True)
                results.append(result)
        # Process scaling, with one enrollment thread per worker: with its default two, one
        # worker already spreads over more than one core (the private-key operations run
        # outside Python's lock), which leaves a second worker less to gain on two cores.
        scaling = [run(workers, 8, args.duration, threads=1) for workers in (1, 2)]
        for result in scaling:
            print(json.dumps(result), flush=True)
        for concurrency in (int(c) for c in args.concurrency.split(",")) if args.against else ():
            other = run(1, concurrency, args.duration, url=args.against, challenge=args.against_challenge)
            other["against"] = args.against
            print(json.dumps(other), flush=True)
            saved_other.append(other)
        if args.before:
            compared = compare(args.before, args.duration)
            print(json.dumps(compared), flush=True)
    # The bound is measured again in every run and this machine's speed drifts: the median.
    bound = statistics.median(r["crypto_bound"]["enrollments_per_s_per_core"] for r in results)
    ops = sorted(r["crypto_bound"]["rsa2048_private_ops_per_s"] for r in results)
    plot(results, bound)
    one = max((r for r in results if r["workers"] == 1), key=lambda r: r["enrollments_per_s"])
    two = max((r for r in results if r["workers"] == 2), key=lambda r: r["enrollments_per_s"], default=None)
    rows = "\n".join(
        f"| {r['workers']} | {r['concurrency']} | {r['enrollments_per_s']} | {r['latency_ms']['p50']} | {r['latency_ms']['p99']} "
        f"| {r['errors']} | {r['server_cpu_s_per_enrollment']} | {r['server_rss_mb']} | {r['ratio_to_bound']} |"
        for r in results
    )
    text = DOC.read_text() if DOC.exists() else ""
    marker = "<!-- generated by make bench-report -->"
    notes = text.split(marker, 1)[1] if marker in text else ""
    DOC.write_text(f"""# Performance

Measured by `make bench-report` on {dt.date.today()}: {machine()}.
The benchmark (`bench/scepbench.py`) and the server share this machine's cores; each worker runs
enrollments on its default number of threads (`[server] threads`: two for this configuration).

![throughput against concurrency](performance.png)

| workers | clients | enrollments/s | p50 ms | p99 ms | errors | server CPU s/enrollment | RSS MB | throughput / bound |
|---|---|---|---|---|---|---|---|---|
{rows}

Crypto bound, measured before and after each run's load: {statistics.median(ops):.0f} RSA-2048 private operations/s (median; {ops[0]:.0f} to
{ops[-1]:.0f}), so {bound:.0f} enrollments/s per core (three private operations each); each row's ratio is to its own run's
bound (the mean of its two measurements).
Best single worker: {one['enrollments_per_s']}/s ({one['ratio_to_bound']} of its run's one-core bound).
""" + (f"Best with two workers: {two['enrollments_per_s']}/s ({two['enrollments_per_s'] / one['enrollments_per_s']:.2f} x one worker).\n" if two else "")
        + f"Process scaling, one enrollment thread per worker, 8 clients: {scaling[0]['enrollments_per_s']}/s with one worker, "
        f"{scaling[1]['enrollments_per_s']}/s with two ({scaling[1]['enrollments_per_s'] / scaling[0]['enrollments_per_s']:.2f} x).\n"
        + against_table(results, saved_other)
        + compared_text(compared)
        + f"\n{marker}{notes}")
    print(f"wrote {DOC} and {PLOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
