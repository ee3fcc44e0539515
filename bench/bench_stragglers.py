"""Benchmark 3: one worker at half speed; static split (--no-steal) vs work stealing.

4 workers, fake backend. With a static split the job waits for the slow worker's shard
(makespan 2T); stealing spreads it (ideal makespan 2T / 1.75... i.e. throughput ratio 1.75).

    python -m bench.bench_stragglers [--prompts 400 --latency 0.05]
"""

from __future__ import annotations

import argparse
import shutil

from bench.common import plot_path, prompt_file, save, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_stragglers", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=400)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--call-target-s", type=float, default=None,
                   help="the job's call_target_s (default: the job default; 0 = one micro-batch per call)")
    args = p.parse_args(argv)

    import ray

    from batch.config import BatchJobConfig
    from batch.driver import run_job

    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    prompts = prompt_file(args.prompts, name="stragglers")
    model = f"fake://?latency_s={args.latency}&slow_worker=worker-3&slow_factor=2"
    rows = []
    try:
        for rnd in range(args.rounds):
            for steal in ((True, False) if rnd % 2 == 0 else (False, True)):
                out = f"/tmp/rd-bench-stragglers-{steal}"
                shutil.rmtree(out, ignore_errors=True)
                flat = {"model": model, "prompts": str(prompts), "output": out, "num_workers": 4, "batch_size": 1,
                        "steal": steal, "height": 8, "width": 8, "steps": 1, "progress": False}
                if args.call_target_s is not None:
                    flat["call_target_s"] = args.call_target_s
                cfg = BatchJobConfig.from_flat(flat)
                s = run_job(cfg, echo=lambda *_: None).summary
                rows.append({"round": rnd, "mode": "stealing" if steal else "static", "steady_s": s["steady_state_s"],
                             "images_per_s": s["steady_images_per_s"],
                             "slow_worker_images": s["workers"].get("worker-3", {}).get("images")})
                shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
    mean = {m: sum(r["images_per_s"] for r in rows if r["mode"] == m) / args.rounds for m in ("static", "stealing")}
    ratio = mean["stealing"] / mean["static"]
    print(table(rows, ["round", "mode", "steady_s", "images_per_s", "slow_worker_images"]))
    print(f"stealing / static throughput: {ratio:.3f} (ideal 1.75, target >= 1.6)")
    path = save("stragglers", {"args": vars(args), "rows": rows, "mean_images_per_s": mean, "ratio": ratio})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(["static split", "work stealing"], [mean["static"], mean["stealing"]], color=["#c44e52", "#55a868"])
    ax.set_ylabel("images/s")
    ax.set_title(f"4 workers, one at half speed: {ratio:.2f}x (ideal 1.75x)")
    fig.tight_layout()
    fig.savefig(plot_path("stragglers"), dpi=110)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
