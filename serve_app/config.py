"""``ServeAppConfig``: the Serve application's typed arguments.

The same keys work as ``serve run serve_app.app:build_app key=value``, in
``serve_app/config.yaml`` (``args:``) and as ``python -m serve_app --key value``.
Worker keys (model, dtype, scheduler...) are WorkerConfig's, shared with batch jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import field_validator, model_validator

from ray_diffusion.config import FrozenConfig, WorkerConfig, split_worker_keys
from ray_diffusion.generation import MAX_GUIDANCE_SCALE, MAX_SIDE, MAX_STEPS

DEFAULT_API_KEY_ENV = "RAY_DIFFUSION_API_KEY"


class ServeLimits(FrozenConfig):
    """Per-request limits the ingress enforces before any GPU work."""

    max_prompt_chars: int = 2000
    """Longest prompt or negative prompt, in characters."""
    max_n: int = 4
    """Most images per request (the OpenAI ``n``)."""
    max_side: int = 1024
    """Largest width or height in pixels."""
    max_steps: int = 100
    """Most denoising steps per request."""
    min_guidance_scale: float = 0.0
    """Smallest guidance scale accepted."""
    max_guidance_scale: float = 20.0
    """Largest guidance scale accepted."""
    max_body_bytes: int = 65536
    """Largest request body in bytes."""
    max_budget: int = 4 * 50 * 1024 * 1024
    """Most n * steps * width * height per request (a cost budget)."""

    @model_validator(mode="after")
    def _check(self) -> "ServeLimits":
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be 1..{MAX_STEPS}, e.g. 100")
        if not 8 <= self.max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be 8..{MAX_SIDE}, e.g. 1024")
        if not 0 <= self.min_guidance_scale <= self.max_guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"guidance limits must satisfy 0 <= min <= max <= {MAX_GUIDANCE_SCALE:g}")
        if self.max_n < 1 or self.max_prompt_chars < 1 or self.max_body_bytes < 256 or self.max_budget < 1:
            raise ValueError("max_n, max_prompt_chars, max_budget must be >= 1 and max_body_bytes >= 256")
        return self


class ServeAppConfig(FrozenConfig):
    """An online diffusion service: one model deployment behind a FastAPI ingress."""

    model_name: str | None = None
    """Name served by /v1/models and accepted in requests' ``model``; None = the model path/id."""
    num_replicas: int = 1
    """Model replicas when autoscaling is off."""
    min_replicas: int | None = None
    """Autoscaling lower bound; setting min_replicas or max_replicas turns autoscaling on."""
    max_replicas: int | None = None
    """Autoscaling upper bound."""
    target_ongoing_requests: float = 2.0
    """Autoscaling target of in-flight requests per replica."""
    gpus_per_replica: int = 1
    """GPUs per model replica; more than 1 loads with device_map="balanced"; 0 = CPU replicas."""
    cpus_per_replica: float = 0.0
    """Ray CPUs reserved per model replica (GPU replicas need none)."""
    max_batch_size: int = 4
    """Most requests @serve.batch groups into one call (also the worker's images per pipeline call)."""
    batch_wait_timeout_s: float = 0.05
    """How long a batch waits to fill before it runs."""
    max_ongoing_requests: int = 8
    """Requests in flight per model replica (must be >= max_batch_size so batches can fill; about
    2x keeps the next batch waiting inside the replica instead of in the caller's router)."""
    max_queued_requests: int = 64
    """Requests queued per caller beyond that; the next one gets 503 with Retry-After."""
    retry_after_s: int = 2
    """Retry-After seconds sent with 503 overload answers."""
    request_timeout_s: float = 120.0
    """Per-request deadline; generation stops at the next denoising step and the client gets 408."""
    health_check_period_s: float = 10.0
    """Seconds between replica health checks."""
    health_check_timeout_s: float = 30.0
    """Seconds a health check may take."""
    api_key_env: str = DEFAULT_API_KEY_ENV
    """Environment variable (read in the ingress replica) holding the API key; unset = no auth."""
    api_key_file: str | None = None
    """File holding the API key (first line), read in the ingress replica; wins over api_key_env."""
    limits: ServeLimits = ServeLimits()
    """Per-request limits."""
    worker: WorkerConfig = WorkerConfig()
    """How each model replica loads and runs the pipeline."""

    @field_validator("num_replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests")
    @classmethod
    def _check_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, e.g. 4; got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ServeAppConfig":
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}) or batches can never fill"
            )
        if self.autoscaling and (self.min_replicas or 0) > (self.max_replicas or self.min_replicas or 0):
            raise ValueError("min_replicas must be <= max_replicas, e.g. 1 and 4")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.worker.model

    @classmethod
    def from_args(cls, values: Mapping[str, Any]) -> "ServeAppConfig":
        """Build from flat args (``serve run`` key=value strings, YAML, CLI)."""
        shared = {"max_batch_size": "max_batch_size", "gpus_per_replica": "num_gpus"}
        defaults = {k: cls.model_fields[k].default for k in shared}
        values = dict(values)
        limits = {k: values.pop(k) for k in list(values) if k in ServeLimits.model_fields}
        if limits:
            values["limits"] = {**dict(values.get("limits") or {}), **limits}
        own, worker = split_worker_keys(values, shared, defaults)
        return cls.parse({**own, "worker": worker})  # type: ignore[return-value]
