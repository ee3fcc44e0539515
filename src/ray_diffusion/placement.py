"""Decide where a worker's pipeline goes: pure, so it is unit-tested without GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from ray_diffusion.errors import WorkerUnavailableError


@dataclass(frozen=True)
class Placement:
    """Where and how a pipeline is loaded."""

    device: str
    """torch device for ``.to()``: "cuda:0" or "cpu" (unused when device_map is set)."""
    device_map: str | None
    """diffusers pipeline-level device map ("balanced") for multi-GPU workers, else None."""
    dtype: str
    """Effective weights dtype."""
    notes: tuple[str, ...] = ()
    """Why the plan differs from what was asked (logged as warnings)."""


def plan_placement(device: str, num_gpus: int, dtype: str, cuda_device_count: int) -> Placement:
    """Plan the device, device map and dtype for a worker.

    Inside a Ray actor, Ray narrows CUDA_VISIBLE_DEVICES to the GPUs it assigned, so the
    worker's GPU is always index 0 and ``cuda_device_count`` is the number it owns;
    never a hard-coded ``cuda:N``.
    """
    notes: list[str] = []
    if device == "cpu" or (device == "auto" and cuda_device_count == 0):
        if device == "auto":
            notes.append("CUDA is not available in this process; running on CPU")
        if num_gpus > 1:
            notes.append(f"device_map='balanced' over {num_gpus} GPUs needs CUDA; loading on CPU instead")
        if dtype == "float16":
            notes.append("float16 is not supported for CPU inference; using float32")
        effective = "float32" if dtype in ("auto", "float16") else dtype
        return Placement(device="cpu", device_map=None, dtype=effective, notes=tuple(notes))

    if cuda_device_count == 0:
        raise WorkerUnavailableError(
            "device='cuda' but no GPU is visible to this worker: use device='auto' to fall back "
            "to CPU, give the worker GPUs (num_gpus), or check `ray status` and CUDA_VISIBLE_DEVICES"
        )
    effective = "float16" if dtype == "auto" else dtype
    if num_gpus > 1:
        if cuda_device_count < num_gpus:
            notes.append(f"asked for {num_gpus} GPUs but {cuda_device_count} are visible; balancing over those")
        if cuda_device_count > 1:
            return Placement(device="cuda", device_map="balanced", dtype=effective, notes=tuple(notes))
    return Placement(device="cuda:0", device_map=None, dtype=effective, notes=tuple(notes))
