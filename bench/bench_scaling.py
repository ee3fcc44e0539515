"""Benchmark 2: scaling to 64 simulated GPUs with the fake backend (fixed latency per batch).

A ray.cluster_utils.Cluster of up to 8 nodes x 8 logical GPUs; N workers each get
``--per-worker`` micro-batches (weak scaling), so the ideal job takes per_worker x latency
at every N. Efficiency = X_N / (N * X_1), reported for three windows, from the manifest's
own timings: *warm* (images started ``--warmup-s`` after the last worker reported ready, to
the last image's end: the steady state, the same definition at every N), *full fleet*
(from the moment the last worker is ready; on 2 cores this still holds the tail of 64
processes starting up), and *steady* (first call to last call, start-up stagger included).

    python -m bench.bench_scaling [--per-worker 300 --latency 0.1]   # >= 30 s per point
    python -m bench.bench_scaling --per-worker 50                    # quick
"""

from __future__ import annotations

import argparse
import math
import shutil
from typing import Any

from bench.common import plot_path, prompt_file, save, table


def manifest_rows(out: str) -> list[dict[str, Any]]:
    import json

    with open(f"{out}/manifest.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def raw_ray_ceiling(ray: object, n: int, per_worker: int, latency: float) -> float:
    """Tasks/s that bare Ray actors sustain with the same latency and fleet: the platform's ceiling.

    Same shape as the driver (2 calls in flight per actor, ray.wait) but no work at all
    around the sleep, so the gap between this and our numbers is our per-task cost.
    """
    import time

    @ray.remote(num_gpus=1, num_cpus=0)
    class Bare:
        def work(self) -> bytes:
            time.sleep(latency)
            return b"x" * 200

    actors = [Bare.remote() for _ in range(n)]
    ray.get([a.work.remote() for a in actors])
    inflight = {a.work.remote(): i for i, a in enumerate(actors) for _ in range(2)}
    sent, done, t0 = len(inflight), 0, time.time()
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1)
        ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
        for ref in ready:
            i = inflight.pop(ref)
            ray.get(ref)
            done += 1
            if sent < n * per_worker:
                inflight[actors[i].work.remote()] = i
                sent += 1
    rate = done / (time.time() - t0)
    for a in actors:
        ray.kill(a)
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scaling", description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2,4,8,16,32,64")
    p.add_argument("--per-worker", type=int, default=300, help="micro-batches per worker")
    p.add_argument("--latency", type=float, default=0.1, help="seconds per micro-batch")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--output-root", default="/tmp",
                   help="where job outputs go; /dev/shm takes this VM's slow disk syscalls (~0.6 ms per file) out")
    p.add_argument("--tag", default="", help="suffix of the results file (e.g. for another latency)")
    p.add_argument("--warmup-s", type=float, default=2.0,
                   help="seconds after the last worker is ready before the warm window opens")
    p.add_argument("--call-target-s", type=float, default=None,
                   help="the job's call_target_s (default: the job default; 0 = one micro-batch per call)")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]

    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from batch.config import BatchJobConfig
    from batch.driver import run_job

    # Outputs are deleted only at the end: on ext4, creating files right after deleting
    # ~10 000 (the previous point's outputs) costs ~10x more CPU for the next few thousand,
    # which would charge the harness's clean-up to the next measurement.
    outputs = {n: f"{args.output_root}/rd-bench-scaling-{n}" for n in counts}
    for out in outputs.values():
        shutil.rmtree(out, ignore_errors=True)
    nodes = math.ceil(max(counts) / args.gpus_per_node)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(nodes):
        # Logical CPUs only: the fake backend sleeps, so workers need no real cores.
        cluster.add_node(num_cpus=args.gpus_per_node, num_gpus=args.gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        for n in counts:
            prompts = prompt_file(n * args.per_worker, name="scaling")
            out = outputs[n]
            flat = {
                "model": f"fake://?latency_s={args.latency}", "prompts": str(prompts), "output": out,
                "num_workers": n, "batch_size": 1, "height": 8, "width": 8, "steps": 1, "progress": False,
            }
            if args.call_target_s is not None:
                flat["call_target_s"] = args.call_target_s
            cfg = BatchJobConfig.from_flat(flat)
            cpu0 = psutil.cpu_times()
            report = run_job(cfg, echo=lambda *_: None)
            cpu1 = psutil.cpu_times()
            s = report.summary
            timings = [r["timings"] for r in manifest_rows(out)]
            warm_from = s["started_at"] + s["all_workers_ready_s"] + args.warmup_s
            last_end = max(t["started_at"] + t["generate_s"] for t in timings)
            warm = sum(1 for t in timings if t["started_at"] >= warm_from) / (last_end - warm_from)
            busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "nice"))
            rows.append({
                "workers": n, "images": s["images_generated"], "calls": s["worker_calls"],
                "steady_s": s["steady_state_s"], "warm_images_per_s": warm,
                "images_per_s": s["full_fleet_images_per_s"], "steady_images_per_s": s["steady_images_per_s"],
                "ideal_s": args.per_worker * args.latency,
                "cpu_busy_pct": 100 * busy / (psutil.cpu_count() * s["wall_s"]),
                "overhead_pct": s["overhead_pct"], "driver_rss_mb": s["driver_peak_rss_mb"],
            })
            first = rows[0]
            for key, eff in (("warm_images_per_s", "warm_efficiency"), ("images_per_s", "efficiency"),
                             ("steady_images_per_s", "steady_efficiency")):
                rows[-1][eff] = rows[-1][key] / (n * first[key] / first["workers"])
            print(f"N={n}: warm {warm:.1f} img/s, efficiency {rows[-1]['warm_efficiency']:.3f} "
                  f"(full fleet {rows[-1]['efficiency']:.3f}), {s['worker_calls']} calls", flush=True)
        n = max(counts)
        ceiling = raw_ray_ceiling(ray, n, args.per_worker, args.latency)
        print(f"bare Ray actors, N={n}: {ceiling:.1f} tasks/s = {ceiling / (n / args.latency):.3f} of ideal", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        for out in outputs.values():
            shutil.rmtree(out, ignore_errors=True)
    print(table(rows, ["workers", "images", "calls", "ideal_s", "steady_s", "warm_images_per_s", "warm_efficiency",
                       "images_per_s", "efficiency", "steady_efficiency", "cpu_busy_pct", "driver_rss_mb"]))

    path = save("scaling" + args.tag, {"args": vars(args), "rows": rows, "bare_ray_tasks_per_s": ceiling,
                            "bare_ray_efficiency": ceiling / (max(counts) / args.latency),
                            "cpu_count": psutil.cpu_count()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["workers"] for r in rows]
    a.plot(ns, [r["warm_images_per_s"] for r in rows], "o-", label="measured (warm window)")
    a.plot(ns, [n * rows[0]["warm_images_per_s"] for n in ns], "--", label="linear")
    a.set_xscale("log", base=2)
    a.set_xlabel("workers (simulated GPUs)")
    a.set_ylabel("images/s")
    a.legend()
    b.plot(ns, [r["warm_efficiency"] for r in rows], "o-", label="warm window")
    b.plot(ns, [r["efficiency"] for r in rows], "s--", alpha=0.6, label="full fleet (from last ready)")
    b.axhline(0.97, color="grey", ls=":", label="target 0.97")
    b.axhline(ceiling / (max(counts) / args.latency), color="#c44e52", ls="--", label=f"bare Ray, N={max(counts)}")
    b.set_xscale("log", base=2)
    b.set_ylim(0.5, 1.05)
    b.set_xlabel("workers")
    b.set_ylabel("efficiency X_N / (N X_1)")
    b.legend()
    fig.suptitle(f"fake backend, {args.latency * 1000:.0f} ms per batch, {args.per_worker} batches per worker")
    fig.tight_layout()
    fig.savefig(plot_path("scaling" + args.tag), dpi=110)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
