"""``DiffusionWorker``: one pipeline, one device, many generate calls.

Plain Python with no Ray in it: the batch driver wraps it in a Ray actor and the Serve
app in a deployment. Lifecycle: construct (cheap) -> ``load()`` once per process ->
``generate()`` many times; ``check_health()`` is cheap and never waits for a
generation in progress.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray_diffusion.config import WorkerConfig
from ray_diffusion.errors import (
    ConfigError,
    GenerationCancelledError,
    ModelLoadError,
    WorkerUnavailableError,
)
from ray_diffusion.generation import GenerationRequest, GenerationResult, Timings
from ray_diffusion.placement import Placement, plan_placement
from ray_diffusion.seeds import image_seed, random_seed

logger = logging.getLogger(__name__)

FAKE_SCHEME = "fake://"
"""Model ids starting with this load the fake backend (ray_diffusion.fake), for scale tests."""


@dataclass(frozen=True)
class ImageJob:
    """One image to produce: the k-th image of request number ``request_pos``."""

    request_pos: int
    k: int
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    height: int
    width: int

    @property
    def call_key(self) -> tuple[int, float, int, int]:
        """Images with equal keys can share one pipeline call."""
        return (self.steps, self.guidance_scale, self.height, self.width)


def expand_requests(requests: Sequence[GenerationRequest], native_size: tuple[int, int]) -> list[ImageJob]:
    """One ImageJob per image; unset sizes become the model's native size, unset seeds random ones."""
    jobs = []
    for pos, req in enumerate(requests):
        seed = req.seed if req.seed is not None else random_seed()
        height = req.height or native_size[0]
        width = req.width or native_size[1]
        for k in range(req.num_images):
            jobs.append(
                ImageJob(
                    request_pos=pos,
                    k=k,
                    prompt=req.prompt,
                    negative_prompt=req.negative_prompt,
                    seed=image_seed(seed, k),
                    steps=req.num_inference_steps,
                    guidance_scale=req.guidance_scale,
                    height=height,
                    width=width,
                )
            )
    return jobs


def plan_calls(jobs: Sequence[ImageJob], max_batch_size: int) -> list[list[int]]:
    """Group job positions into pipeline calls: equal ``call_key`` only, at most ``max_batch_size`` each.

    Groups keep first-appearance order and jobs keep their order inside a group, so the
    plan is a pure function of the input.
    """
    groups: dict[tuple[int, float, int, int], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.call_key, []).append(i)
    calls = []
    for members in groups.values():
        for start in range(0, len(members), max_batch_size):
            calls.append(members[start : start + max_batch_size])
    return calls


def _node_id() -> str:
    # Only ask Ray when this process is already part of a Ray job; the worker never
    # imports or starts Ray itself.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class DiffusionWorker:
    """Loads one diffusers pipeline and turns lists of requests into images."""

    def __init__(self, config: WorkerConfig | Mapping[str, Any] | None = None, worker_id: str | None = None):
        if config is None:
            config = WorkerConfig()
        elif not isinstance(config, WorkerConfig):
            config = WorkerConfig.parse(config)
        self.config: WorkerConfig = config
        self.worker_id = worker_id or f"worker-{os.getpid()}"
        self.node_id = ""
        self.placement: Placement | None = None
        self.scheduler_name = ""
        self.native_size = (512, 512)
        self._pipe: Any = None
        self._load_s = 0.0
        # diffusers pipelines are not thread-safe; Serve may call generate() from
        # several threads, so calls into the pipeline are serialized here.
        self._lock = threading.Lock()
        self._stats = {"pipeline_calls": 0, "images": 0, "requests": 0, "busy_s": 0.0, "failures": 0}
        self._consecutive_failures = 0

    # -- lifecycle -----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def load(self) -> None:
        """Load the pipeline onto this process's device. Idempotent."""
        if self._pipe is not None:
            return
        start = time.perf_counter()
        self.node_id = _node_id()
        if self.config.model.startswith(FAKE_SCHEME):
            from ray_diffusion.fake import FakePipeline

            self.placement = Placement(device="cpu", device_map=None, dtype="float32")
            pipe = FakePipeline.from_url(self.config.model, worker_id=self.worker_id)
        else:
            pipe = self._load_diffusers()
        self._pipe = pipe
        self.scheduler_name = type(pipe.scheduler).__name__
        self.native_size = self._native_size(pipe)
        self._load_s = time.perf_counter() - start
        logger.info(
            "worker %s loaded %s on %s (%s, %s) in %.2fs",
            self.worker_id,
            self.config.model,
            self.placement.device_map or self.placement.device,
            self.placement.dtype,
            self.scheduler_name,
            self._load_s,
        )

    def _load_diffusers(self) -> Any:
        import torch
        import diffusers
        import transformers

        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        placement = plan_placement(cfg.device, cfg.num_gpus, cfg.dtype, cuda_count)
        for note in placement.notes:
            logger.warning(
                "worker %s: %s (CUDA_VISIBLE_DEVICES=%s)", self.worker_id, note, os.environ.get("CUDA_VISIBLE_DEVICES")
            )
        self.placement = placement

        kwargs: dict[str, Any] = {
            "dtype": getattr(torch, placement.dtype),
            "use_safetensors": cfg.use_safetensors,
            "local_files_only": cfg.local_files_only,
        }
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.variant:
            kwargs["variant"] = cfg.variant
        if placement.device_map:
            kwargs["device_map"] = placement.device_map
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(cfg.model, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            hint = (
                " (local_files_only is set: point model at a local directory or pre-populate the HF cache)"
                if cfg.local_files_only
                else ""
            )
            raise ModelLoadError(f"could not load model {cfg.model!r}: {exc}{hint}") from None
        if not placement.device_map:
            pipe = pipe.to(placement.device)
        pipe.set_progress_bar_config(disable=True)

        if cfg.scheduler:
            pipe.scheduler = self._make_scheduler(cfg.scheduler, pipe.scheduler.config)
        if cfg.attention_slicing:
            pipe.enable_attention_slicing()
        if cfg.vae_tiling and getattr(pipe, "vae", None) is not None:
            pipe.vae.enable_tiling()
        if cfg.compile:
            denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
            if denoiser is None:
                raise ConfigError(f"compile: {type(pipe).__name__} has no unet or transformer to compile")
            # nn.Module.compile compiles in place, so the pipeline keeps its registered module.
            denoiser.compile(backend=cfg.compile_backend, mode=cfg.compile_mode)
        return pipe

    @staticmethod
    def _make_scheduler(name: str, base_config: Any) -> Any:
        import diffusers

        cls = getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ConfigError(
                f"scheduler: {name!r} is not a diffusers scheduler class, "
                "e.g. EulerDiscreteScheduler or DPMSolverMultistepScheduler"
            )
        return cls.from_config(base_config)

    @staticmethod
    def _native_size(pipe: Any) -> tuple[int, int]:
        scale = getattr(pipe, "vae_scale_factor", 8)
        sample = getattr(pipe, "default_sample_size", None)
        if sample is None and getattr(pipe, "unet", None) is not None:
            sample = pipe.unet.config.sample_size
        if isinstance(sample, int):
            return (sample * scale, sample * scale)
        return (512, 512)

    def check_health(self) -> None:
        """Raise ``WorkerUnavailableError`` if the worker cannot serve. Never blocks on a generation."""
        if self._pipe is None:
            raise WorkerUnavailableError(f"worker {self.worker_id} has not loaded its model yet")
        if self._consecutive_failures >= self.config.max_consecutive_failures:
            raise WorkerUnavailableError(
                f"worker {self.worker_id} failed {self._consecutive_failures} pipeline calls in a row; "
                "it needs a restart"
            )

    def stats(self) -> dict[str, Any]:
        """Counters since load: pipeline calls, images, requests, busy seconds, failures."""
        import resource

        return {
            **self._stats,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_s": self._load_s,
            "consecutive_failures": self._consecutive_failures,
            "worker_id": self.worker_id,
            "node_id": self.node_id,
        }

    def describe(self) -> dict[str, Any]:
        """What this worker runs: model, scheduler, dtype, device plan, native size."""
        p = self.placement
        return {
            "model": self.config.model,
            "scheduler": self.scheduler_name,
            "dtype": p.dtype if p else None,
            "device": (p.device_map or p.device) if p else None,
            "device_map": p.device_map if p else None,
            "native_size": list(self.native_size),
            "placement_notes": list(p.notes) if p else [],
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "load_s": self._load_s,
            "worker_id": self.worker_id,
            "node_id": self.node_id,
        }

    # -- generation ----------------------------------------------------------------
    def generate(
        self,
        requests: Iterable[GenerationRequest | Mapping[str, Any]],
        *,
        submitted_at: float | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Render every image of ``requests``; results come back in request order, then k.

        Compatible requests (same steps, guidance and size) share pipeline calls of up to
        ``max_batch_size`` images. Each image has its own ``torch.Generator`` seeded
        with its own seed, so its initial noise does not depend on its batch-mates.
        ``submitted_at`` (epoch seconds) fills ``timings.queue_s``; ``should_cancel`` is
        polled at every denoising step and stops the call with GenerationCancelledError.
        """
        if self._pipe is None:
            raise WorkerUnavailableError(f"worker {self.worker_id} has not loaded its model: call load() first")
        reqs = [r if isinstance(r, GenerationRequest) else GenerationRequest.parse(r) for r in requests]
        jobs = expand_requests(reqs, self.native_size)
        results: list[GenerationResult | None] = [None] * len(jobs)
        with self._lock:
            for call in plan_calls(jobs, self.config.max_batch_size):
                batch = [jobs[i] for i in call]
                for i, result in zip(call, self._run_call(batch, reqs, submitted_at, should_cancel), strict=True):
                    results[i] = result
            self._stats["requests"] += len(reqs)
        return [r for r in results if r is not None]

    def _make_generator(self, seed: int) -> Any:
        factory = getattr(self._pipe, "generator_factory", None)
        if factory is not None:  # the fake backend runs without torch
            return factory(seed)
        import torch

        # CPU generators: diffusers draws the noise on CPU and moves it, so a seed gives
        # the same initial latents on every device and GPU model.
        return torch.Generator().manual_seed(seed)

    def _run_call(
        self,
        batch: list[ImageJob],
        reqs: list[GenerationRequest],
        submitted_at: float | None,
        should_cancel: Callable[[], bool] | None,
    ) -> list[GenerationResult]:
        first = batch[0]
        started = time.time()
        queue_s = max(0.0, started - submitted_at) if submitted_at is not None else 0.0
        generators = [self._make_generator(job.seed) for job in batch]
        cancelled_at: list[int] = []

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if should_cancel is not None and should_cancel():
                # diffusers checks `_interrupt` before each step and skips the rest.
                pipe._interrupt = True
                cancelled_at.append(step)
            return callback_kwargs

        t0 = time.perf_counter()
        try:
            output = self._pipe(
                prompt=[job.prompt for job in batch],
                # "" is what diffusers uses for a missing negative prompt, so mixing
                # items with and without one in a batch changes nothing.
                negative_prompt=[job.negative_prompt or "" for job in batch],
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                height=first.height,
                width=first.width,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end if should_cancel is not None else None,
            )
        except Exception as exc:
            self._stats["failures"] += 1
            self._consecutive_failures += 1
            if _is_oom(exc):
                import torch

                logger.warning("worker %s: out of memory on a batch of %d images", self.worker_id, len(batch))
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            raise
        generate_s = time.perf_counter() - t0
        self._consecutive_failures = 0
        self._stats["pipeline_calls"] += 1
        self._stats["busy_s"] += generate_s
        if cancelled_at:
            raise GenerationCancelledError(
                f"generation stopped after step {cancelled_at[0] + 1} of {first.steps}: the request's deadline passed"
            )

        results = []
        for job, image in zip(batch, output.images, strict=True):
            t1 = time.perf_counter()
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            encode_s = time.perf_counter() - t1
            req = reqs[job.request_pos]
            results.append(
                GenerationResult(
                    request_id=req.request_id,
                    image_index=job.k,
                    prompt=job.prompt,
                    negative_prompt=job.negative_prompt,
                    seed=job.seed,
                    num_inference_steps=job.steps,
                    guidance_scale=job.guidance_scale,
                    height=job.height,
                    width=job.width,
                    png=buf.getvalue(),
                    model=self.config.model,
                    scheduler=self.scheduler_name,
                    dtype=self.placement.dtype if self.placement else "",
                    worker_id=self.worker_id,
                    node_id=self.node_id,
                    timings=Timings(
                        started_at=started,
                        queue_s=queue_s,
                        load_s=self._load_s,
                        generate_s=generate_s,
                        encode_s=encode_s,
                        batch_images=len(batch),
                    ),
                )
            )
        self._stats["images"] += len(results)
        return results
