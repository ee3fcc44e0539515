"""Benchmark 5: cold start, time to first image for batch and serve, split into phases.

Batch: a fresh `python -m batch` process (embedded Ray, 1 worker, 1 prompt).
Serve: ray.init -> serve.run (replica placement + model load) -> first HTTP request.

    python -m bench.bench_coldstart [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from typing import Any

from bench.common import CACHE, PY, REPO, plot_path, prompt_file, save, table, tiny_model


def batch_once(model: str) -> dict[str, Any]:
    out = CACHE / "out-coldstart"
    shutil.rmtree(out, ignore_errors=True)
    prompts = prompt_file(1, name="coldstart")
    t0 = time.time()
    subprocess.run([PY, "-m", "batch", "--model", model, "--prompts", str(prompts), "--output", str(out),
                    "--num-workers", "1", "--gpus-per-worker", "0", "--steps", "4", "--no-progress"],
                   check=True, capture_output=True, cwd=REPO, timeout=600)
    total = time.time() - t0
    s = json.loads((out / "summary.json").read_text())
    (worker,) = s["workers"].values()
    ready_at = s["started_at"] + s["startup_s"]
    return {
        "path": "batch",
        "interpreter_and_imports_s": s["started_at"] - t0,
        "ray_start_s": s["ray_init_s"],
        "actor_placement_s": s["startup_s"] - s["ray_init_s"] - worker["load_s"],
        "model_load_s": worker["load_s"],
        "first_generation_s": s["last_call_end_at"] - ready_at,
        "time_to_first_image_s": s["last_call_end_at"] - t0,
        "process_total_s": total,
    }


def serve_once(model: str) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from serve_app.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    t1 = time.time()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": model, "gpus_per_replica": 0}), name="cold", route_prefix="/")
        t2 = time.time()
        load_s = serve.get_deployment_handle("DiffusionModel", app_name="cold").describe.remote().result()["load_s"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations",
                       json={"prompt": "x", "num_inference_steps": 4, "seed": 1}, timeout=120)
        r.raise_for_status()
        t3 = time.time()
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "path": "serve",
        "interpreter_and_imports_s": None,
        "ray_start_s": t1 - t0,
        "actor_placement_s": (t2 - t1) - load_s,
        "model_load_s": load_s,
        "first_generation_s": t3 - t2,
        "time_to_first_image_s": t3 - t0,
        "process_total_s": None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_coldstart", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    model = str(tiny_model("tiny"))
    runs = []
    for _ in range(args.rounds):
        runs.append(batch_once(model))
        runs.append(serve_once(model))
    keys = ["interpreter_and_imports_s", "ray_start_s", "actor_placement_s", "model_load_s", "first_generation_s",
            "time_to_first_image_s"]

    def mean(path: str) -> dict[str, Any]:
        rs = [r for r in runs if r["path"] == path]
        return {"path": path, **{k: (sum(r[k] for r in rs) / len(rs) if rs[0][k] is not None else None) for k in keys}}

    rows = [mean("batch"), mean("serve")]
    print(table(rows, ["path", *keys]))
    path = save("coldstart", {"args": vars(args), "runs": runs, "mean": rows})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    left = [0.0, 0.0]
    for k, color in zip(keys[:-1], ["#999999", "#4c72b0", "#dd8452", "#55a868", "#c44e52"]):
        vals = [r[k] or 0.0 for r in rows]
        ax.barh([r["path"] for r in rows], vals, left=left, color=color, label=k.removesuffix("_s").replace("_", " "))
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds to first image")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(plot_path("coldstart"), dpi=110)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
