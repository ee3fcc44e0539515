import pytest

from ray_diffusion.errors import WorkerUnavailableError
from ray_diffusion.placement import plan_placement


def test_auto_without_cuda_falls_back_to_cpu_float32_with_a_note():
    p = plan_placement("auto", 1, "auto", 0)
    assert (p.device, p.device_map, p.dtype) == ("cpu", None, "float32")
    assert any("CUDA is not available" in n for n in p.notes)


def test_float16_on_cpu_runs_as_float32_and_says_so():
    p = plan_placement("cpu", 1, "float16", 0)
    assert p.dtype == "float32"
    assert any("float16" in n for n in p.notes)


def test_bfloat16_on_cpu_is_kept():
    assert plan_placement("auto", 1, "bfloat16", 0).dtype == "bfloat16"


def test_one_gpu_uses_device_zero_because_ray_narrows_visibility():
    p = plan_placement("auto", 1, "auto", 1)
    assert (p.device, p.device_map, p.dtype) == ("cuda:0", None, "float16")


def test_several_gpus_use_balanced_device_map():
    p = plan_placement("auto", 2, "bfloat16", 2)
    assert (p.device_map, p.dtype) == ("balanced", "bfloat16")


def test_several_gpus_on_cpu_fall_back_and_say_why():
    p = plan_placement("auto", 2, "auto", 0)
    assert p.device == "cpu" and p.device_map is None
    assert any("balanced" in n for n in p.notes)


def test_cuda_required_but_absent_is_a_clear_error():
    with pytest.raises(WorkerUnavailableError, match="no GPU is visible"):
        plan_placement("cuda", 1, "auto", 0)
