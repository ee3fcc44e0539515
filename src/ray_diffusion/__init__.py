"""ray-diffusion: run Hugging Face diffusers pipelines at scale on Ray.

Heavy libraries (torch, diffusers, ray) are imported only where they are used, so
importing this package is cheap.
"""

from ray_diffusion.config import WorkerConfig
from ray_diffusion.errors import (
    ConfigError,
    GenerationCancelledError,
    InputFileError,
    InvalidRequestError,
    ModelLoadError,
    RayDiffusionError,
    WorkerUnavailableError,
)
from ray_diffusion.generation import GenerationRequest, GenerationResult
from ray_diffusion.sharding import shard_prompts
from ray_diffusion.worker import DiffusionWorker

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DiffusionWorker",
    "GenerationCancelledError",
    "GenerationRequest",
    "GenerationResult",
    "InputFileError",
    "InvalidRequestError",
    "ModelLoadError",
    "RayDiffusionError",
    "WorkerConfig",
    "WorkerUnavailableError",
    "shard_prompts",
    "__version__",
]
