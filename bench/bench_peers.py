"""Benchmark 1: our batch driver vs a plain loop, the accelerate recipe and torchrun, on CPU.

Same prompts, model (--preset bench tiny pipeline), steps, size, batch size and number of
workers (torch threads = cores / workers); methods alternate within each round.

    python -m bench.bench_peers [--prompts 256 --workers 2 --rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH, CACHE, PY, REPO, plot_path, prompt_file, save, table, tiny_model

BIN = Path(PY).parent


def parse_peer_stats(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("PEER_STATS ")]


def run_peer(mode: str, model: Path, prompts: Path, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    out = CACHE / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    common = [str(BENCH / "peer_loop.py"), "--mode", mode, "--model", str(model), "--prompts", str(prompts),
              "--out", str(out), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--size", str(args.size), "--threads", str(args.threads)]
    if mode == "accelerate":
        # `--cpu --num_processes N` silently runs ONE process in accelerate 1.16 (multi-CPU needs
        # mpirun); `--multi_gpu` launches N torchrun ranks, and PartialState(cpu=True) uses gloo.
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(workers), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *common]
    elif mode == "torchrun":
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(workers), "--master_port", str(29500 + os.getpid() % 1000),
               *common]
    else:
        cmd = [PY, *common]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    ranks = parse_peer_stats(proc.stdout)
    images = sum(r["images"] for r in ranks)
    steady = max(r["last"] for r in ranks) - min(r["first"] for r in ranks)
    return {
        "method": mode if mode != "plain" else "plain loop (1 process)",
        "processes": len(ranks),
        "images": images,
        "wall_s": wall,
        "startup_s": max(r["loaded"] for r in ranks) - t0,
        "steady_images_per_s": images / steady,
        "compute_s_mean": sum(r["busy_s"] for r in ranks) / len(ranks),
        "peak_rss_mb_per_process": max(r["peak_rss_mb"] for r in ranks),
        "overhead_pct": None,
    }


def run_ours(model: Path, prompts: Path, workers: int, args: argparse.Namespace, steal: bool) -> dict[str, Any]:
    out = CACHE / f"out-ours-{'steal' if steal else 'static'}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PY, "-m", "batch", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
           "--num-workers", str(workers), "--gpus-per-worker", "0", "--num-threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--height", str(args.size),
           "--width", str(args.size), "--no-progress", *([] if steal else ["--no-steal"])]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"batch driver failed:\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {
        "method": f"ray-diffusion ({'stealing' if steal else 'static split'})",
        "processes": s["num_workers"],
        "images": s["images_generated"],
        "wall_s": wall,
        "startup_s": s["startup_s"] + (wall - s["wall_s"]),  # plus interpreter start before run_job
        "steady_images_per_s": s["steady_images_per_s"],
        "compute_s_mean": s["compute_s_mean"],
        "peak_rss_mb_per_process": max(w.get("peak_rss_mb") or 0 for w in s["workers"].values()),
        "driver_peak_rss_mb": s["driver_peak_rss_mb"],
        "overhead_pct": s["overhead_pct"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_peers", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    args.threads = max(1, (os.cpu_count() or 2) // args.workers)

    model = tiny_model("bench")
    prompts = prompt_file(args.prompts)
    methods = ["plain", "accelerate", "torchrun", "ours-steal", "ours-static"]
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = methods if rnd % 2 == 0 else list(reversed(methods))  # alternate to cancel drift
        for m in order:
            if m.startswith("ours"):
                r = run_ours(model, prompts, args.workers, args, steal=m == "ours-steal")
            else:
                r = run_peer(m, model, prompts, 1 if m == "plain" else args.workers, args)
            r["round"] = rnd
            runs.append(r)
            print(f"round {rnd} {r['method']}: {r['steady_images_per_s']:.1f} img/s steady, wall {r['wall_s']:.1f}s",
                  flush=True)

    def best(method: str) -> dict[str, Any]:
        rs = [r for r in runs if r["method"] == method]
        agg = {k: sum(r[k] for r in rs) / len(rs) for k in ("wall_s", "startup_s", "steady_images_per_s",
                                                            "compute_s_mean", "peak_rss_mb_per_process")}
        ov = [r["overhead_pct"] for r in rs if r["overhead_pct"] is not None]
        return {"method": method, "processes": rs[0]["processes"], "images": rs[0]["images"], **agg,
                "overhead_pct": sum(ov) / len(ov) if ov else None}

    names = list(dict.fromkeys(r["method"] for r in runs))
    summary = [best(n) for n in names]
    acc = next(s for s in summary if s["method"] == "accelerate")["steady_images_per_s"]
    tr = next(s for s in summary if s["method"] == "torchrun")["steady_images_per_s"]
    for s in summary:
        s["vs_accelerate"] = s["steady_images_per_s"] / acc
        s["vs_torchrun"] = s["steady_images_per_s"] / tr
    cols = ["method", "processes", "wall_s", "startup_s", "steady_images_per_s", "vs_accelerate", "vs_torchrun",
            "overhead_pct", "peak_rss_mb_per_process"]
    print(table(summary, cols))
    path = save("peers", {"args": vars(args), "runs": runs, "summary": summary})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [s["method"].replace(" (", "\n(") for s in summary]
    a.bar(labels, [s["steady_images_per_s"] for s in summary], color="#4c72b0")
    a.set_ylabel("steady-state images/s")
    a.set_title(f"{args.prompts} prompts, {args.workers} workers, batch {args.batch_size}")
    b.bar(labels, [s["wall_s"] for s in summary], color="#dd8452")
    b.set_ylabel("end-to-end wall time (s)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(plot_path("peers"), dpi=110)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
