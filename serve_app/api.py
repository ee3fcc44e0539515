"""The HTTP API's bodies (OpenAI images API + extensions) and the limits check.

Pure: no Ray, no FastAPI app; unit-tested directly.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_diffusion.errors import InvalidRequestError
from ray_diffusion.generation import GenerationRequest
from serve_app.config import ServeLimits

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImagesRequest(BaseModel):
    """POST /v1/images/generations, as OpenAI's images API defines it, plus extensions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    prompt: str = Field(min_length=1)
    """Text to render."""
    model: str | None = None
    """Model name; must match /v1/models when given."""
    n: int = 1
    """Number of images."""
    size: str | None = None
    """"WIDTHxHEIGHT", e.g. "512x512"; None = the model's native size."""
    response_format: Literal["b64_json", "url"] = "b64_json"
    """Only b64_json is supported; url is refused with 400."""
    user: str | None = None
    """End-user id (accepted for compatibility; not stored)."""
    quality: str | None = None
    """Accepted for compatibility with OpenAI clients; ignored."""
    style: str | None = None
    """Accepted for compatibility with OpenAI clients; ignored."""
    seed: int | None = None
    """Extension: seed of the first image (image k uses seed + k); None = random, returned."""
    negative_prompt: str | None = None
    """Extension: negative prompt."""
    num_inference_steps: int | None = None
    """Extension: denoising steps (default 30)."""
    guidance_scale: float | None = None
    """Extension: classifier-free guidance (default 7.5)."""


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    seeds: list[int]
    """Extension: the seed of every image, in order."""
    model: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """``"512x768"`` -> ``(width, height)``; None -> (None, None)."""
    if size is None:
        return None, None
    m = _SIZE.match(size.strip())
    if not m:
        raise InvalidRequestError('size: must be "WIDTHxHEIGHT", e.g. "512x512"')
    return int(m.group(1)), int(m.group(2))


def to_generation_request(
    body: ImagesRequest, limits: ServeLimits, served_model: str, native_size: tuple[int, int]
) -> GenerationRequest:
    """Check ``body`` against ``limits`` and turn it into a worker request.

    Raises InvalidRequestError (422) naming the field, or ConfigError-like 400s for
    unsupported options, before any GPU work.
    """
    from ray_diffusion.errors import ConfigError

    if body.response_format == "url":
        raise ConfigError("response_format: 'url' is not supported by this server; use 'b64_json'")
    if body.model is not None and body.model != served_model:
        raise InvalidRequestError(f"model: this server serves {served_model!r}, not {body.model!r}")
    if len(body.prompt) > limits.max_prompt_chars:
        raise InvalidRequestError(f"prompt: {len(body.prompt)} characters; the limit is {limits.max_prompt_chars}")
    if body.negative_prompt and len(body.negative_prompt) > limits.max_prompt_chars:
        raise InvalidRequestError(f"negative_prompt: longer than {limits.max_prompt_chars} characters")
    if not 1 <= body.n <= limits.max_n:
        raise InvalidRequestError(f"n: must be 1..{limits.max_n}, e.g. 1; got {body.n}")
    width, height = parse_size(body.size)
    for name, side in (("size", width), ("size", height)):
        if side is not None and (side % 8 or not 8 <= side <= limits.max_side):
            raise InvalidRequestError(
                f"{name}: width and height must be multiples of 8 in 8..{limits.max_side}, e.g. \"512x512\"; "
                f"got {body.size!r}"
            )
    steps = body.num_inference_steps
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise InvalidRequestError(f"num_inference_steps: must be 1..{limits.max_steps}, e.g. 30; got {steps}")
    g = body.guidance_scale
    if g is not None and not limits.min_guidance_scale <= g <= limits.max_guidance_scale:
        raise InvalidRequestError(
            f"guidance_scale: must be {limits.min_guidance_scale:g}..{limits.max_guidance_scale:g}, e.g. 7.5; got {g}"
        )
    fields = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": body.seed,
        "num_images": body.n,
        "height": height,
        "width": width,
    }
    if steps is not None:
        fields["num_inference_steps"] = steps
    if g is not None:
        fields["guidance_scale"] = g
    request = GenerationRequest.parse(fields)
    w, h = request.width or native_size[1], request.height or native_size[0]
    budget = request.num_images * request.num_inference_steps * w * h
    if budget > limits.max_budget:
        raise InvalidRequestError(
            f"n: n * steps * width * height = {budget} exceeds the budget {limits.max_budget}; "
            "ask for fewer or smaller images or fewer steps"
        )
    return request
