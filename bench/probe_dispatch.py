"""Where the per-task cost at N = 64 goes: the dispatch loop with three kinds of actors.

Same cluster shape as bench_scaling (8 nodes x 8 logical GPUs), 64 actors, 2 calls in
flight each, no file writes: (1) actors that only sleep, (2) a DiffusionWorker on the fake
backend in a plain actor, (3) our BatchWorkerActor (worker + metrics). The gap between (3)
and bench_scaling's full job is the driver's per-result work.

    python -m bench.probe_dispatch [LATENCY_S]     # default 0.4
"""

import sys
import time

import ray
from ray.cluster_utils import Cluster

from batch.actor import BatchWorkerActor
from ray_diffusion.config import WorkerConfig
from ray_diffusion.generation import GenerationRequest
LAT = float(sys.argv[1]) if len(sys.argv) > 1 else 0.4  # seconds per call
PER = int(30 / LAT)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
for _ in range(8):
    cluster.add_node(num_cpus=8, num_gpus=8)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

@ray.remote(num_gpus=1, num_cpus=0)
class Bare:
    def work(self, reqs, t):
        time.sleep(LAT); return b"x" * 200

@ray.remote(num_gpus=1, num_cpus=0)
class PlainWorker:
    def __init__(self):
        from ray_diffusion.worker import DiffusionWorker
        self.w = DiffusionWorker({"model": f"fake://?latency_s={LAT}"}); self.w.load()
    def work(self, reqs, t):
        return self.w.generate(reqs, submitted_at=t)

def run(name, make, call):
    actors = [make() for _ in range(64)]
    ray.get([call(a, [GenerationRequest(prompt="x", seed=1, num_inference_steps=1, height=8, width=8)]) for a in actors])
    req = [GenerationRequest(prompt="a fox, variation 7", seed=1, num_inference_steps=1, height=8, width=8, request_id="1/0")]
    inflight = {call(a, req): i for i, a in enumerate(actors) for _ in range(2)}
    sent, done, t0 = len(inflight), 0, time.time()
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1)
        ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
        for ref in ready:
            i = inflight.pop(ref); ray.get(ref); done += 1
            if sent < 64 * PER:
                inflight[call(actors[i], req)] = i; sent += 1
    rate = done / (time.time() - t0)
    print(f"{name}: {rate:.1f}/s = {rate / (64 / LAT):.3f} of ideal", flush=True)
    for a in actors: ray.kill(a)

run("bare", lambda: Bare.remote(), lambda a, r: a.work.remote(r, time.time()))
run("DiffusionWorker (fake) in a plain actor", lambda: PlainWorker.remote(), lambda a, r: a.work.remote(r, time.time()))
cfg = WorkerConfig(model=f"fake://?latency_s={LAT}")
run("BatchWorkerActor (with metrics)", lambda: BatchWorkerActor.options(num_gpus=1, num_cpus=0).remote(cfg, "w"),
    lambda a, r: a.generate.remote(r, time.time()))
ray.shutdown(); cluster.shutdown()
