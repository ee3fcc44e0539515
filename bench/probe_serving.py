"""Where the Serve app's added latency goes: p50 of each path, calls interleaved, tiny pipeline.

In-process DiffusionWorker.generate (the reference), a plain deployment wrapping the same
worker called through a handle (sync method / asyncio.to_thread), our model deployment's
generate_micro_batch and generate (serve.batch) through a handle, the full HTTP POST, and
GET /v1/models (proxy + ingress only). Interleaved, so every path sees the same machine.

    python -m bench.probe_serving
"""

import asyncio
import socket
import statistics
import time

import httpx, ray
from ray import serve
from serve_app.app import build_app
from bench.common import tiny_model
from ray_diffusion.generation import GenerationRequest
from ray_diffusion.worker import DiffusionWorker
model = str(tiny_model("tiny"))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build_app({"model": model, "max_batch_size": 1, "num_threads": 1, "batch_wait_timeout_s": 0.01,
                     "max_ongoing_requests": 8, "max_queued_requests": 256}), name="p", route_prefix="/")

@serve.deployment(ray_actor_options={"num_cpus": 0, "num_gpus": 0})
class Plain:
    def __init__(self):
        self.w = DiffusionWorker({"model": model, "num_threads": 1, "max_batch_size": 1}); self.w.load()
    def gen_sync(self, req):
        return self.w.generate([req])
    async def gen_thread(self, req):
        return await asyncio.to_thread(self.w.generate, [req])
serve.run(Plain.bind(), name="plain", route_prefix="/plain")
hp = serve.get_deployment_handle("Plain", app_name="plain")
h = serve.get_deployment_handle("DiffusionModel", app_name="p")
direct = DiffusionWorker({"model": model, "num_threads": 1, "max_batch_size": 1}); direct.load()
req = GenerationRequest(prompt="a lighthouse at dusk", seed=1, num_inference_steps=4, height=64, width=64)
c = httpx.Client()
body = {"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 4, "seed": 1}
fns = {
    "direct in-process": lambda: direct.generate([req]),
    "Plain sync handle": lambda: hp.gen_sync.remote(req).result(),
    "Plain thread handle": lambda: hp.gen_thread.remote(req).result(),
    "model generate_micro_batch": lambda: h.generate_micro_batch.remote([req]).result(),
    "model generate (serve.batch)": lambda: h.generate.remote(req, time.time() + 60).result(),
    "HTTP POST": lambda: c.post(f"http://127.0.0.1:{port}/v1/images/generations", json=body),
    "HTTP GET /v1/models": lambda: c.get(f"http://127.0.0.1:{port}/v1/models"),
}
lat = {k: [] for k in fns}; inner = {k: [] for k in fns}
for rnd in range(30):
    for k, fn in fns.items():
        t = time.perf_counter(); out = fn(); lat[k].append(time.perf_counter() - t)
        if isinstance(out, list) and out and hasattr(out[0], "timings"):
            inner[k].append(out[0].timings.generate_s)
for k in fns:
    xs = lat[k][3:]
    extra = f" inner generate_s p50 {1000*statistics.median(inner[k][3:]):.1f}" if inner[k] else ""
    print(f"{k:32s} p50 {1000*statistics.median(xs):6.1f} ms  mean {1000*statistics.mean(xs):6.1f}{extra}", flush=True)
serve.shutdown(); ray.shutdown()
