"""The plain DiffusionWorker inside Ray actors that own logical GPUs."""

import pytest

from ray_diffusion.generation import GenerationRequest
from ray_diffusion.worker import DiffusionWorker


def test_four_gpu_actors_each_load_once_on_their_own_device(ray_start, tiny_model_dir):
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    class Probe:
        def __init__(self, model):
            import os

            self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            self.gpu_ids = ray.get_gpu_ids()
            self.worker = DiffusionWorker({"model": model, "num_threads": 1}, worker_id=f"w{self.visible}")
            self.worker.load()

        def info(self):
            return self.visible, self.gpu_ids, self.worker.describe(), self.worker.stats()

        def generate(self, requests):
            return self.worker.generate(requests)

    actors = [Probe.remote(str(tiny_model_dir)) for _ in range(4)]
    infos = ray.get([a.info.remote() for a in actors])
    visible = [v for v, _, _, _ in infos]
    assert sorted(visible) == ["0", "1", "2", "3"]
    for v, gpu_ids, desc, stats in infos:
        assert [str(g) for g in gpu_ids] == [v]
        # no real CUDA here: the logical GPU's worker falls back to CPU
        assert desc["device"] == "cpu" and desc["dtype"] == "float32"
        assert desc["node_id"] == ray.get_runtime_context().get_node_id()
        assert stats["load_s"] > 0

    request = GenerationRequest(prompt="same everywhere", seed=9, num_inference_steps=2)
    outputs = ray.get([a.generate.remote([request]) for a in actors])
    assert len({out[0].png for out in outputs}) == 1  # deterministic across actors
    # each actor loaded exactly once and ran exactly one pipeline call
    assert [s["pipeline_calls"] for *_, s in ray.get([a.info.remote() for a in actors])] == [1, 1, 1, 1]


@pytest.mark.parametrize("ray_start", [{"num_cpus": 2, "num_gpus": 0}], indirect=True)
def test_typed_errors_cross_the_actor_boundary(ray_start, tiny_model_dir):
    import ray

    from ray_diffusion.errors import InvalidRequestError

    actor = ray.remote(num_cpus=0)(DiffusionWorker).remote({"model": str(tiny_model_dir)})
    ray.get(actor.load.remote())
    with pytest.raises(InvalidRequestError, match="num_inference_steps"):
        ray.get(actor.generate.remote([{"prompt": "x", "num_inference_steps": 0}]))
