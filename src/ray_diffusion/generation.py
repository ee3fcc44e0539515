"""What a worker is asked for (``GenerationRequest``) and what it returns (``GenerationResult``).

Request defaults live here and only here; the batch driver and the Serve app read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ray_diffusion._validation import parse_model
from ray_diffusion.errors import InvalidRequestError
from ray_diffusion.seeds import MAX_SEED

DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5
MAX_STEPS = 150
MAX_GUIDANCE_SCALE = 50.0
MAX_SIDE = 4096
MAX_IMAGES_PER_REQUEST = 16


class GenerationRequest(BaseModel):
    """One prompt to render, with its own parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prompt: str
    """Text to render; must not be empty."""
    negative_prompt: str | None = None
    """What to steer away from (used when guidance_scale > 1)."""
    seed: int | None = None
    """Seed of the first image; image k uses seed + k. None = a random seed, returned in the result."""
    num_inference_steps: int = DEFAULT_STEPS
    """Denoising steps, 1..150."""
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    """Classifier-free guidance scale, 0..50 (<= 1 disables guidance)."""
    height: int | None = None
    """Image height in pixels, a multiple of 8; None = the model's native size."""
    width: int | None = None
    """Image width in pixels, a multiple of 8; None = the model's native size."""
    num_images: int = 1
    """Images to generate for this prompt, 1..16."""
    request_id: str | None = None
    """Caller's id for this request, echoed in every result."""

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        """Validate ``data``; bad input raises ``InvalidRequestError`` naming the field."""
        return parse_model(cls, data, InvalidRequestError)

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError('must not be empty, e.g. "a watercolor fox"')
        return v

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_SEED:
            raise ValueError(f"must be 0..{MAX_SEED}, e.g. 42; got {v}")
        return v

    @field_validator("num_inference_steps")
    @classmethod
    def _check_steps(cls, v: int) -> int:
        if not 1 <= v <= MAX_STEPS:
            raise ValueError(f"must be 1..{MAX_STEPS}, e.g. {DEFAULT_STEPS}; got {v}")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _check_guidance(cls, v: float) -> float:
        if not 0.0 <= v <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"must be 0..{MAX_GUIDANCE_SCALE:g}, e.g. {DEFAULT_GUIDANCE_SCALE}; got {v}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _check_side(cls, v: int | None) -> int | None:
        if v is not None and (v < 8 or v > MAX_SIDE or v % 8):
            raise ValueError(f"must be a multiple of 8 in 8..{MAX_SIDE}, e.g. 512; got {v}")
        return v

    @field_validator("num_images")
    @classmethod
    def _check_num_images(cls, v: int) -> int:
        if not 1 <= v <= MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"must be 1..{MAX_IMAGES_PER_REQUEST}, e.g. 1; got {v}")
        return v


class Timings(BaseModel):
    """Where the time of one image went, in seconds."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    started_at: float = 0.0
    """Epoch seconds when the pipeline call that produced this image started."""
    queue_s: float = 0.0
    """From the caller's submit time (if given) until the worker started the call."""
    load_s: float = 0.0
    """This worker's one-time model load time."""
    generate_s: float = 0.0
    """Wall time of the pipeline call that produced this image (shared by its batch)."""
    encode_s: float = 0.0
    """PNG encoding time of this image."""
    batch_images: int = 1
    """Images in the pipeline call that produced this image."""


class GenerationResult(BaseModel):
    """One generated image and everything needed to reproduce it."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    request_id: str | None
    """The request's id."""
    image_index: int
    """k for the k-th image of the request (0-based)."""
    prompt: str
    """Prompt used."""
    negative_prompt: str | None
    """Negative prompt used."""
    seed: int
    """Seed of this image's generator."""
    num_inference_steps: int
    """Denoising steps run."""
    guidance_scale: float
    """Guidance scale used."""
    height: int
    """Image height in pixels."""
    width: int
    """Image width in pixels."""
    png: bytes
    """The image, PNG-encoded."""
    model: str
    """Model id or path loaded."""
    scheduler: str
    """Scheduler class used."""
    dtype: str
    """Effective weights dtype."""
    worker_id: str
    """Worker that generated it."""
    node_id: str
    """Node (Ray node id, or hostname outside Ray) of that worker."""
    timings: Timings
    """Time spent on this image."""
