"""Benchmark 4: Serve app under closed-loop load on loopback (tiny pipeline, CPU).

Concurrency 1, 4, 16, 64 with @serve.batch max_batch_size 1 and 8; p50/p95/p99 latency,
throughput, errors; plus the added latency vs a direct in-process DiffusionWorker.generate
call at concurrency 1. Request loops are bounded in count and time.

    python -m bench.bench_serving [--requests-per-level 96 --max-seconds 60]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from typing import Any

from bench.common import plot_path, save, table, tiny_model

BODY = {"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 4}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load(url: str, concurrency: int, total: int, max_seconds: float) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each sending its next request when the last returns."""
    import httpx

    latencies: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    issued = [0]
    stop_at = time.monotonic() + max_seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if issued[0] >= total:
                        return
                    issued[0] += 1
                    seed = issued[0]
                t0 = time.perf_counter()
                try:
                    code = http.post(url, json={**BODY, "seed": seed}).status_code
                except httpx.HTTPError:
                    code = -1
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    codes.append(code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [lat for lat, c in zip(latencies, codes) if c == 200]
    return {
        "concurrency": concurrency, "requests": len(codes), "errors": sum(c != 200 for c in codes),
        "throughput_rps": len(ok) / wall, "p50_ms": 1000 * pct(ok, 50), "p95_ms": 1000 * pct(ok, 95),
        "p99_ms": 1000 * pct(ok, 99),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serving", description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--requests-per-level", type=int, default=96)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model replica")
    p.add_argument("--paired", type=int, default=60, help="interleaved direct/HTTP requests for the overhead")
    p.add_argument("--rounds", type=int, default=1, help="passes over both batch sizes (order alternates)")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    model = tiny_model("tiny")

    # Direct, in-process reference: the same worker, the same request, no HTTP or Ray.
    from ray_diffusion.generation import GenerationRequest
    from ray_diffusion.worker import DiffusionWorker

    direct = DiffusionWorker({"model": str(model), "num_threads": args.threads, "max_batch_size": 1})
    direct.load()

    import httpx
    import ray
    from ray import serve

    from serve_app.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Floor:
        """The least a Serve HTTP request costs here: proxy, one replica, no FastAPI, no work."""

        async def __call__(self, request: Any) -> str:
            return "ok"

    serve.run(Floor.bind(), name="floor", route_prefix="/floor")
    base = f"http://127.0.0.1:{port}"
    paired: dict[str, list[float]] = {"direct": [], "http": [], "floor": [], "ingress_only": []}
    try:
        serve.run(build_app({"model": str(model), "num_replicas": 1, "max_batch_size": 1, "max_ongoing_requests": 8,
                             "max_queued_requests": 256, "batch_wait_timeout_s": 0.01,
                             "num_threads": args.threads}), name="bench", route_prefix="/")
        # Concurrency 1, interleaved, so that the in-process reference and the Serve path see
        # the same machine (Ray's daemons are running for both).
        with httpx.Client(timeout=120) as http:
            calls = {
                "direct": lambda i: direct.generate([GenerationRequest(
                    prompt=BODY["prompt"], seed=i, num_inference_steps=4, height=64, width=64)]),
                "http": lambda i: http.post(f"{base}/v1/images/generations", json={**BODY, "seed": i}),
                "floor": lambda i: http.get(f"{base}/floor"),
                "ingress_only": lambda i: http.get(f"{base}/v1/models"),
            }
            for i in range(args.paired + 5):
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    call(i)
                    if i >= 5:  # warm-up
                        paired[name].append(time.perf_counter() - t0)
        serve.delete("bench")
    except BaseException:
        serve.shutdown()
        ray.shutdown()
        raise
    p50 = {k: 1000 * statistics.median(v) for k, v in paired.items()}
    direct_p50 = p50["direct"]
    print(f"c=1, interleaved: direct {p50['direct']:.1f} ms, HTTP {p50['http']:.1f} ms, "
          f"Serve floor {p50['floor']:.1f} ms, proxy+ingress (GET /v1/models) {p50['ingress_only']:.1f} ms", flush=True)
    rows = []
    try:
        # Rounds alternate the order of the two batch sizes, so drift on the shared machine
        # does not favour one of them.
        for rnd, batch in [(r, b) for r in range(args.rounds) for b in ((1, 8) if r % 2 == 0 else (8, 1))]:
            # Two batches' worth in flight per replica (the app's default ratio): the next batch
            # waits inside the replica, not in the caller's router, which polls a full replica.
            serve.run(build_app({"model": str(model), "num_replicas": 1, "max_batch_size": batch,
                                 "max_ongoing_requests": max(8, 2 * batch), "max_queued_requests": 256,
                                 "batch_wait_timeout_s": 0.01, "num_threads": args.threads}),
                      name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/images/generations"
            load(url, 2, 8, 30)  # warm-up
            for c in levels:
                r = load(url, c, max(args.requests_per_level, 2 * c), args.max_seconds)
                r["max_batch_size"] = batch
                r["round"] = rnd
                rows.append(r)
                print(f"batch {batch} c={c}: {r['throughput_rps']:.1f} req/s p50 {r['p50_ms']:.1f} ms "
                      f"errors {r['errors']}", flush=True)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()

    overhead = p50["http"] - direct_p50
    def mean_rps(b: int, c: int) -> float | None:
        xs = [r["throughput_rps"] for r in rows if r["max_batch_size"] == b and r["concurrency"] == c]
        return sum(xs) / len(xs) if xs else None

    gain = mean_rps(8, 16) / mean_rps(1, 16) if mean_rps(1, 16) and mean_rps(8, 16) else None
    print(table(rows, ["round", "max_batch_size", "concurrency", "requests", "errors", "throughput_rps", "p50_ms",
                       "p95_ms", "p99_ms"]))
    print(f"direct DiffusionWorker.generate p50: {direct_p50:.1f} ms; Serve p50 overhead at c=1: {overhead:.1f} ms "
          f"(Serve's own floor for an empty request here: {p50['floor']:.1f} ms)")
    if gain:
        print(f"batched (8) / unbatched throughput at concurrency 16: {gain:.2f}x")
    path = save("serving", {"args": vars(args), "rows": rows, "direct_p50_ms": direct_p50,
                            "overhead_p50_ms": overhead, "batching_gain_c16": gain,
                            "paired_p50_ms": p50, "serve_floor_p50_ms": p50["floor"],
                            "proxy_ingress_p50_ms": p50["ingress_only"]})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for batch, style in ((1, "o-"), (8, "s-")):
        def mean(key: str, c: int, batch: int = batch) -> float:
            xs = [r[key] for r in rows if r["max_batch_size"] == batch and r["concurrency"] == c]
            return sum(xs) / len(xs)

        a.plot(levels, [mean("throughput_rps", c) for c in levels], style, label=f"max_batch_size {batch}")
        b.plot(levels, [mean("p50_ms", c) for c in levels], style, label=f"p50, batch {batch}")
        b.plot(levels, [mean("p99_ms", c) for c in levels], style, alpha=0.4, label=f"p99, batch {batch}")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=7)
    a.set_ylabel("requests/s")
    b.set_ylabel("latency (ms)")
    b.set_yscale("log")
    fig.suptitle(f"Serve, tiny pipeline 64x64 / 4 steps, 1 CPU replica (mean of {args.rounds} round(s))")
    fig.tight_layout()
    fig.savefig(plot_path("serving"), dpi=110)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
