"""A fake pipeline with controllable latency, for scale simulation and fault timing.

Loaded by ``DiffusionWorker`` when the model id is a ``fake://`` URL, e.g.
``fake://?latency_s=0.1&per_image_s=0.01&slow_worker=worker-1&slow_factor=2``.
It never replaces the real pipeline as the only test of a path; it exists so that
tests and benchmarks can simulate 64 GPUs, stragglers and crashes on 2 CPU cores.

Query parameters (all optional):
- ``latency_s``: seconds per pipeline call (default 0.01), spread over the steps.
- ``per_image_s``: extra seconds per image in the call (default 0).
- ``slow_worker`` / ``slow_factor``: the worker with that id runs slow_factor x slower.
- ``crash_on``: a prompt containing this text kills the worker process (os._exit),
  as a segfaulting CUDA kernel would.
- ``fail_on``: a prompt containing this text raises RuntimeError (a recoverable error).
- ``load_s``: seconds the model load takes (to observe a replica that is not ready yet).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ray_diffusion.errors import ConfigError


class FakeScheduler:
    """Stands in for a diffusers scheduler (only its name is used)."""


class FakeGenerator:
    """Stands in for ``torch.Generator`` so the fake backend never imports torch."""

    def __init__(self, seed: int):
        self._seed = seed

    def initial_seed(self) -> int:
        return self._seed


@dataclass
class FakeOutput:
    images: list[Any]


class FakePipeline:
    """Callable like a diffusers text-to-image pipeline; images are seeded noise."""

    vae_scale_factor = 8
    default_sample_size = 8
    generator_factory = FakeGenerator

    def __init__(
        self,
        latency_s: float = 0.01,
        per_image_s: float = 0.0,
        slow_factor: float = 1.0,
        crash_on: str | None = None,
        fail_on: str | None = None,
    ):
        self.latency_s = latency_s
        self.per_image_s = per_image_s
        self.slow_factor = slow_factor
        self.crash_on = crash_on
        self.fail_on = fail_on
        self.scheduler = FakeScheduler()
        self._interrupt = False

    @classmethod
    def from_url(cls, url: str, worker_id: str = "") -> "FakePipeline":
        """Build from a ``fake://?key=value`` model id (see module docstring)."""
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        known = {"latency_s", "per_image_s", "slow_worker", "slow_factor", "crash_on", "fail_on", "load_s"}
        unknown = set(query) - known
        if unknown:
            raise ConfigError(f"model: unknown fake backend parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        try:
            load_s = float(query.get("load_s", 0.0))
            slow = float(query.get("slow_factor", 1.0)) if query.get("slow_worker") == worker_id else 1.0
            pipe = cls(
                latency_s=float(query.get("latency_s", 0.01)),
                per_image_s=float(query.get("per_image_s", 0.0)),
                slow_factor=slow,
                crash_on=query.get("crash_on"),
                fail_on=query.get("fail_on"),
            )
        except ValueError as exc:
            raise ConfigError(f"model: bad fake backend parameter in {url!r}: {exc}") from None
        if load_s > 0:
            time.sleep(load_s)  # simulated weight loading
        return pipe

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def __call__(
        self,
        prompt: list[str],
        generator: list[Any],
        num_inference_steps: int,
        height: int,
        width: int,
        callback_on_step_end: Any = None,
        **kwargs: Any,
    ) -> FakeOutput:
        import numpy as np
        from PIL import Image

        for p in prompt:
            if self.crash_on and self.crash_on in p:
                os._exit(17)
            if self.fail_on and self.fail_on in p:
                raise RuntimeError(f"fake backend failure on prompt {p!r}")
        self._interrupt = False
        total = (self.latency_s + self.per_image_s * len(prompt)) * self.slow_factor
        for step in range(num_inference_steps):
            if self._interrupt:
                continue
            # Simulated GPU time: the fake backend occupies the worker without using CPU.
            step_end = time.monotonic() + total / num_inference_steps
            remaining = step_end - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, step, {})
        images = []
        for g in generator:
            rng = np.random.default_rng(g.initial_seed())
            images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        return FakeOutput(images=images)
