"""How a worker loads and runs its pipeline: ``WorkerConfig``.

Shared by the batch driver and the Serve app, so both read the same defaults from here.
Frozen pydantic models: picklable for Ray, validated where they cross a boundary
(CLI, YAML, Serve args), every field documented (a unit test checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from ray_diffusion._validation import parse_model
from ray_diffusion.errors import ConfigError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""Hub id used when no model is given (needs network or a local cache)."""

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cuda", "cpu"]


class FrozenConfig(BaseModel):
    """Base of every config: immutable, no unknown keys, field docs from docstrings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "FrozenConfig":
        """Validate ``data``; a bad field raises ``ConfigError`` naming it."""
        return parse_model(cls, data, ConfigError)


class WorkerConfig(FrozenConfig):
    """Everything a DiffusionWorker needs to load one pipeline and run it."""

    model: str = DEFAULT_MODEL
    """Hub id or local directory passed to ``DiffusionPipeline.from_pretrained``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; None = the default branch."""
    variant: str | None = None
    """Weight variant to load, e.g. "fp16" for repos that ship half-precision files."""
    local_files_only: bool = False
    """Never touch the network; load from the local path or HF cache (offline clusters)."""
    use_safetensors: bool = True
    """Load only safetensors weights (refuses pickle-based .bin files)."""
    dtype: Dtype = "auto"
    """Weights dtype. auto = float16 on CUDA, float32 on CPU. float16 on CPU runs as float32 (with a warning)."""
    scheduler: str | None = None
    """diffusers scheduler class name to swap in, e.g. "EulerDiscreteScheduler"; None keeps the model's."""
    device: Device = "auto"
    """auto = the GPU Ray assigned (cuda:0 in the actor), else CPU with a warning; cuda = fail without a GPU."""
    num_gpus: int = 1
    """GPUs this worker owns; more than 1 loads with device_map="balanced" across them."""
    num_threads: int | None = None
    """torch CPU threads; None leaves torch's default (front ends pass cores / workers)."""
    max_batch_size: int = 4
    """Most images in one pipeline call; compatible requests are grouped up to this."""
    compile: bool = False
    """torch.compile the denoiser (UNet/transformer) after loading."""
    compile_backend: str = "inductor"
    """torch.compile backend ("inductor" on GPUs; "eager" only checks the path)."""
    compile_mode: str | None = None
    """torch.compile mode, e.g. "reduce-overhead" or "max-autotune"; None = default."""
    attention_slicing: bool = False
    """Compute attention in slices: less memory, a little slower."""
    vae_tiling: bool = False
    """Decode the VAE in tiles so large images fit in memory."""
    max_consecutive_failures: int = 3
    """Failed pipeline calls in a row (e.g. OOM) after which check_health reports the worker broken."""

    @field_validator("num_gpus")
    @classmethod
    def _check_gpus(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0, e.g. 1; got {v}")
        return v

    @field_validator("num_threads")
    @classmethod
    def _check_threads(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1 or unset, e.g. 2; got {v}")
        return v

    @field_validator("max_batch_size", "max_consecutive_failures")
    @classmethod
    def _check_positive(cls, v: int) -> int:
        if not 1 <= v <= 1024:
            raise ValueError(f"must be 1..1024, e.g. 4; got {v}")
        return v

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a hub id or a local directory, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
        return v


def split_worker_keys(
    values: Mapping[str, Any], shared: Mapping[str, str], own_defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], WorkerConfig]:
    """Split a front end's flat keys (CLI, YAML, Serve args) into its own keys and a WorkerConfig.

    ``shared`` maps a front-end key to the worker field it also sets (e.g. batch's
    ``batch_size`` -> ``max_batch_size``), so one value is never configured twice;
    ``own_defaults`` gives those keys' defaults. A nested ``worker`` mapping is accepted too.
    """
    own: dict[str, Any] = {}
    worker: dict[str, Any] = {}
    for key, value in values.items():
        if key == "worker" and isinstance(value, Mapping):
            worker.update(value)
        elif key in WorkerConfig.model_fields and key not in shared.values():
            worker[key] = value
        else:
            own[key] = value
    for key, field in shared.items():
        worker[field] = own.get(key, own_defaults[key])
    return own, WorkerConfig.parse(worker)  # type: ignore[return-value]
