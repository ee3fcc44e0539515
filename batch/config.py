"""``BatchJobConfig``: one batch job, from CLI flags and/or a YAML file.

Worker-level settings (dtype, scheduler, batching...) are not repeated here: they
live in ``ray_diffusion.config.WorkerConfig`` and are nested under ``worker``; the
CLI and YAML use the same flat keys for both (``--dtype``, ``dtype:``).
Generation defaults come from ``ray_diffusion.generation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import field_validator

from ray_diffusion.config import FrozenConfig, WorkerConfig, split_worker_keys
from ray_diffusion.errors import ConfigError
from ray_diffusion.generation import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, GenerationRequest

class BatchJobConfig(FrozenConfig):
    """A prompt-list job: inputs, outputs, generation parameters, fleet shape."""

    prompts: str = ""
    """Prompt file (.txt, .jsonl or .csv), local path or fsspec URL."""
    output: str = ""
    """Output directory, local path or fsspec URL (e.g. s3://bucket/run1)."""
    address: str | None = None
    """Ray cluster to join ("auto", ray://...); None = RAY_ADDRESS if set, else an embedded local Ray."""
    serve_app: str | None = None
    """Send micro-batches to this running Serve app's model deployment instead of starting actors."""
    num_workers: int | None = None
    """Worker actors; None = one per gpus_per_worker GPUs in the cluster (CPU workers if it has none)."""
    gpus_per_worker: int = 1
    """GPUs per worker; more than 1 loads with device_map="balanced"; 0 = CPU workers."""
    batch_size: int = 4
    """Images per pipeline call (and per scheduled micro-batch)."""
    steps: int = DEFAULT_STEPS
    """Denoising steps for items that do not set their own."""
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    """Guidance scale for items that do not set their own."""
    height: int | None = None
    """Image height for items that do not set their own; None = the model's native size."""
    width: int | None = None
    """Image width for items that do not set their own; None = the model's native size."""
    negative_prompt: str | None = None
    """Negative prompt for items that do not set their own."""
    seed: int = 0
    """Job seed: an item without a seed gets derive_seed(seed, index)."""
    images_per_prompt: int = 1
    """Images per prompt; image k of item i is saved as <i>-<k>.png and uses seed + k."""
    resume: bool = False
    """Continue a job in a non-empty output directory, regenerating only what is missing or corrupt."""
    steal: bool = True
    """Idle workers take micro-batches from the tail of the largest remaining shard (False = static split)."""
    call_target_s: float = 2.0
    """Group micro-batches into one worker call until it is expected to last this long (amortizes
    Ray's per-call cost for fast models); 0 = one micro-batch per call. Groups shrink near the end."""
    max_item_retries: int = 2
    """Retries of an item whose generation failed or crashed its worker before it is reported failed."""
    max_worker_restarts: int = 3
    """Times Ray restarts a crashed worker actor before it is given up."""
    worker_start_timeout_s: float = 600.0
    """Seconds to wait for workers to be placed and load their model."""
    progress: bool = True
    """Show the driver's progress bar."""
    worker: WorkerConfig = WorkerConfig()
    """How each worker loads and runs the pipeline (model, dtype, scheduler...)."""

    @field_validator("num_workers")
    @classmethod
    def _check_workers(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1, e.g. 4; got {v}")
        return v

    @field_validator("gpus_per_worker", "max_item_retries", "max_worker_restarts")
    @classmethod
    def _check_non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0, e.g. 1; got {v}")
        return v

    @field_validator("call_target_s")
    @classmethod
    def _check_call_target(cls, v: float) -> float:
        if not 0 <= v <= 60:
            raise ValueError(f"must be 0..60 seconds, e.g. 2; got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _check_batch(cls, v: int) -> int:
        if not 1 <= v <= 1024:
            raise ValueError(f"must be 1..1024, e.g. 4; got {v}")
        return v

    @field_validator("images_per_prompt")
    @classmethod
    def _check_images(cls, v: int) -> int:
        GenerationRequest.parse({"prompt": "x", "num_images": v})
        return v

    @property
    def model(self) -> str:
        return self.worker.model

    def item_defaults(self) -> dict[str, Any]:
        """Request fields an item inherits unless its row overrides them."""
        return {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "negative_prompt": self.negative_prompt,
        }

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "BatchJobConfig":
        """Build from flat keys (CLI/YAML); worker keys are nested under ``worker``."""
        shared = {"batch_size": "max_batch_size", "gpus_per_worker": "num_gpus"}
        defaults = {k: cls.model_fields[k].default for k in shared}
        job, worker = split_worker_keys(values, shared, defaults)
        cfg = cls.parse({**job, "worker": worker})
        for field in ("prompts", "output"):
            if not getattr(cfg, field):
                raise ConfigError(f"{field}: required, e.g. --{field} {'prompts.txt' if field == 'prompts' else 'out/'}")
        return cfg  # type: ignore[return-value]
