"""Real-GPU checks; skipped on machines without CUDA (all of CI)."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from ray_diffusion.generation import GenerationRequest  # noqa: E402
from ray_diffusion.worker import DiffusionWorker  # noqa: E402


def test_auto_loads_float16_on_cuda_0(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir)})
    w.load()
    assert (w.describe()["device"], w.describe()["dtype"]) == ("cuda:0", "float16")
    a = w.generate([GenerationRequest(prompt="x", seed=1, num_inference_steps=2)])[0]
    b = w.generate([GenerationRequest(prompt="x", seed=1, num_inference_steps=2)])[0]
    assert a.png == b.png


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_use_balanced_device_map(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir), "num_gpus": 2})
    w.load()
    assert w.describe()["device_map"] == "balanced"
    assert w.generate([GenerationRequest(prompt="x", seed=1, num_inference_steps=2)])[0].width == 64


def test_inductor_compile_on_gpu(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir), "compile": True})
    w.load()
    assert w.generate([GenerationRequest(prompt="x", seed=1, num_inference_steps=2)])[0].height == 64
