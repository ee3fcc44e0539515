"""DiffusionWorker on the real tiny diffusers pipeline (no Ray)."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

from ray_diffusion.config import WorkerConfig
from ray_diffusion.errors import (
    ConfigError,
    GenerationCancelledError,
    InvalidRequestError,
    ModelLoadError,
    WorkerUnavailableError,
)
from ray_diffusion.generation import GenerationRequest
from ray_diffusion.worker import DiffusionWorker, expand_requests, plan_calls
from tests.support import assert_images_close, pixels, wait_for_condition

STEPS = 3

def req(prompt, seed, **kw):
    return GenerationRequest(prompt=prompt, seed=seed, num_inference_steps=STEPS, **kw)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    w = DiffusionWorker(WorkerConfig(model=str(tiny_model_dir), max_batch_size=4, num_threads=1), worker_id="w0")
    w.load()
    return w


def test_construction_is_cheap_and_generate_needs_load(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir)})
    assert not w.loaded
    with pytest.raises(WorkerUnavailableError, match="load"):
        w.generate([req("x", 1)])
    with pytest.raises(WorkerUnavailableError, match="not loaded"):
        w.check_health()


def test_loads_on_cpu_with_native_size(worker):
    info = worker.describe()
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["native_size"] == [64, 64]
    assert info["scheduler"] == "DDIMScheduler"
    worker.check_health()


def test_same_seed_gives_identical_png_bytes(worker):
    a = worker.generate([req("a red fox", 42)])[0]
    b = worker.generate([req("a red fox", 42)])[0]
    assert a.png == b.png
    assert (a.width, a.height, a.seed) == (64, 64, 42)
    assert Image.open(io.BytesIO(a.png)).size == (64, 64)


def test_different_seeds_give_different_images(worker):
    a, b = worker.generate([req("a red fox", 1), req("a red fox", 2)])
    assert np.abs(pixels(a.png) - pixels(b.png)).mean() > 1.0


def test_pixels_do_not_depend_on_position_in_a_micro_batch(worker):
    prompts = ["a cat", "a dog in the rain", "x", "a very long prompt " * 3]
    batched = worker.generate([req(p, 100 + i) for i, p in enumerate(prompts)])
    assert {r.timings.batch_images for r in batched} == {4}
    for i, p in enumerate(prompts):
        alone = worker.generate([req(p, 100 + i)])[0]
        assert alone.timings.batch_images == 1
        assert_images_close(alone.png, batched[i].png)


def test_num_images_use_consecutive_seeds_that_reproduce_alone(worker):
    results = worker.generate([req("a boat", 7, num_images=3)])
    assert [r.seed for r in results] == [7, 8, 9]
    assert [r.image_index for r in results] == [0, 1, 2]
    again = worker.generate([req("a boat", 8)])[0]
    assert_images_close(again.png, results[1].png)


def test_incompatible_requests_get_separate_calls_in_request_order(worker):
    before = worker.stats()["pipeline_calls"]
    results = worker.generate(
        [
            req("a", 1, height=32, width=32),
            req("b", 2),
            req("c", 3, height=32, width=32),
            req("d", 4, guidance_scale=1.0),
        ]
    )
    assert worker.stats()["pipeline_calls"] - before == 3
    assert [r.prompt for r in results] == ["a", "b", "c", "d"]
    assert [(r.width, r.height) for r in results] == [(32, 32), (64, 64), (32, 32), (64, 64)]
    assert [r.timings.batch_images for r in results] == [2, 1, 2, 1]


def test_missing_seed_gets_a_recorded_random_seed(worker):
    a, b = worker.generate([GenerationRequest(prompt="x", num_inference_steps=STEPS)] * 2)
    assert a.seed != b.seed
    replay = worker.generate([req("x", a.seed)])[0]
    assert_images_close(replay.png, a.png)


def test_bad_request_dict_raises_typed_error_before_any_work(worker):
    calls = worker.stats()["pipeline_calls"]
    with pytest.raises(InvalidRequestError, match="height"):
        worker.generate([{"prompt": "ok", "num_inference_steps": 2}, {"prompt": "x", "height": 65}])
    assert worker.stats()["pipeline_calls"] == calls


def test_results_carry_metadata_and_timings(worker):
    r = worker.generate([req("meta", 5, negative_prompt="blurry")], submitted_at=0.0)[0]
    assert (r.model, r.scheduler, r.dtype, r.worker_id) == (worker.config.model, "DDIMScheduler", "float32", "w0")
    assert r.node_id
    assert r.timings.generate_s > 0 and r.timings.encode_s > 0 and r.timings.load_s > 0
    assert r.timings.queue_s > 0  # submitted at the epoch
    assert r.negative_prompt == "blurry"


def test_cancel_stops_at_the_next_step(worker):
    seen = []

    def should_cancel():
        seen.append(1)
        return len(seen) >= 2

    with pytest.raises(GenerationCancelledError, match="step 2 of 10"):
        worker.generate([GenerationRequest(prompt="x", seed=1, num_inference_steps=10)], should_cancel=should_cancel)
    # polled once per step that ran: the remaining 8 steps were skipped
    assert len(seen) == 2


def test_scheduler_override_by_class_name(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir), "scheduler": "EulerDiscreteScheduler"})
    w.load()
    assert w.describe()["scheduler"] == "EulerDiscreteScheduler"
    r = w.generate([req("x", 1)])[0]
    assert r.scheduler == "EulerDiscreteScheduler"


def test_unknown_scheduler_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="scheduler: 'NoSuchScheduler'"):
        DiffusionWorker({"model": str(tiny_model_dir), "scheduler": "NoSuchScheduler"}).load()


def test_missing_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load model"):
        DiffusionWorker({"model": str(tmp_path / "nope"), "local_files_only": True}).load()


def test_float16_on_cpu_runs_as_float32(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir), "dtype": "float16"})
    w.load()
    assert w.describe()["dtype"] == "float32"
    assert w.generate([req("x", 3)])[0].dtype == "float32"


def test_compile_switch_compiles_the_unet_and_keeps_images(tiny_model_dir, worker):
    # The eager backend exercises the torch.compile path without a C++ toolchain run.
    w = DiffusionWorker({"model": str(tiny_model_dir), "compile": True, "compile_backend": "eager", "num_threads": 1})
    w.load()
    assert w._pipe.unet._compiled_call_impl is not None
    a = w.generate([req("compiled", 11)])[0]
    b = worker.generate([req("compiled", 11)])[0]
    assert_images_close(a.png, b.png)


def test_memory_switches_apply(tiny_model_dir):
    w = DiffusionWorker({"model": str(tiny_model_dir), "attention_slicing": True, "vae_tiling": True})
    w.load()
    assert w._pipe.vae.use_tiling
    assert w.generate([req("x", 1)])[0].width == 64


def test_repeated_failures_make_the_worker_unhealthy_and_success_resets():
    w = DiffusionWorker({"model": "fake://?latency_s=0&fail_on=boom", "max_consecutive_failures": 2})
    w.load()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            w.generate([req("boom", 1)])
    with pytest.raises(WorkerUnavailableError, match="2 pipeline calls in a row"):
        w.check_health()
    w.generate([req("fine", 1)])
    w.check_health()


def test_health_check_does_not_wait_for_a_long_generation():
    w = DiffusionWorker({"model": "fake://?latency_s=30"})
    w.load()
    stop = threading.Event()
    errors = []

    def run():
        try:
            w.generate([req("long", 1)], should_cancel=stop.is_set)
        except GenerationCancelledError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    wait_for_condition(w._lock.locked, message="generation started")
    w.check_health()  # returns although the pipeline lock is held
    assert t.is_alive()
    stop.set()
    t.join(timeout=30)
    assert not t.is_alive() and len(errors) == 1


def test_expand_and_plan_calls_are_pure():
    reqs = [req("a", 1, num_images=3), req("b", 2, height=32, width=32), req("c", 3)]
    jobs = expand_requests(reqs, (64, 64))
    assert [(j.request_pos, j.k, j.seed) for j in jobs] == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 2), (2, 0, 3)]
    assert plan_calls(jobs, 2) == [[0, 1], [2, 4], [3]]
    assert plan_calls(jobs, 8) == [[0, 1, 2, 4], [3]]


def test_bench_preset_loads_and_renders_native_size(tmp_path):
    from ray_diffusion.tiny import build_tiny_pipeline

    path = build_tiny_pipeline(tmp_path / "bench", preset="bench", seed=0)
    w = DiffusionWorker({"model": str(path), "num_threads": 1})
    w.load()
    assert w.describe()["native_size"] == [64, 64]
    assert w.generate([req("x", 1)])[0].width == 64
