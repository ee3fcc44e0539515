"""Where the Serve app's added latency goes: p50 of each hop, sequential calls, tiny pipeline.

    python -m bench.probe_serving
"""

import socket
import statistics
import time

import httpx
import ray
from ray import serve

from serve_app.app import build_app
from bench.common import tiny_model
from ray_diffusion.generation import GenerationRequest
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build_app({"model": str(tiny_model("tiny")), "max_batch_size": 1, "num_threads": 1}), name="p", route_prefix="/")
h = serve.get_deployment_handle("DiffusionModel", app_name="p")
req = GenerationRequest(prompt="a lighthouse at dusk", seed=1, num_inference_steps=4, height=64, width=64)
def p50(fn, n=40):
    xs = []
    for _ in range(n):
        t = time.perf_counter(); fn(); xs.append(time.perf_counter() - t)
    return 1000 * statistics.median(xs[5:])
c = httpx.Client()
print("GET /healthz (proxy+ingress+describe hop)", p50(lambda: c.get(f"http://127.0.0.1:{port}/healthz")))
print("GET /v1/models (proxy+ingress)", p50(lambda: c.get(f"http://127.0.0.1:{port}/v1/models")))
print("handle.generate_micro_batch (thread, no batch)", p50(lambda: h.generate_micro_batch.remote([req]).result()))
print("handle.generate (serve.batch)", p50(lambda: h.generate.remote(req, time.time() + 60).result()))
print("HTTP POST", p50(lambda: c.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 4, "seed": 1})))
serve.shutdown(); ray.shutdown()
