"""Seed rules. An image is a pure function of (model, prompt, seed, params).

- An item with an explicit seed uses it.
- An item without one gets ``derive_seed(job_seed, index)``: the first 8 bytes of
  BLAKE2b over ``"{job_seed}:{index}"``, masked to 63 bits. It depends only on the job
  seed and the item's global index, so a rerun or a resume reproduces every image no
  matter which worker, batch or node produced it.
- Image ``k`` of an item (images-per-prompt / ``n`` > 1) uses ``image_seed(seed, k)`` =
  ``(seed + k) mod 2**63``; asking for seed ``s + k`` with one image reproduces it.
- Online requests without a seed get a fresh random seed, returned to the caller.
"""

from __future__ import annotations

import hashlib
import secrets

MAX_SEED = 2**63 - 1
"""Largest seed accepted (seeds are signed-64-bit safe for JSON, CSV and torch)."""


def derive_seed(job_seed: int, index: int) -> int:
    """Seed of the item at global ``index`` in a job seeded with ``job_seed``."""
    digest = hashlib.blake2b(f"{job_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_SEED


def image_seed(seed: int, k: int) -> int:
    """Seed of the ``k``-th image generated for an item whose seed is ``seed``."""
    return (seed + k) % (MAX_SEED + 1)


def random_seed() -> int:
    """A fresh seed for a request that did not ask for one."""
    return secrets.randbits(63)
