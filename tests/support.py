"""Helpers shared by the test tiers (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for_condition(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError).

    Ray's ``wait_for_condition`` in spirit: tests wait for a state, never for a time.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the state may not be reachable yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {message} (last error: {last_exc!r})")


# Measured on the tiny pipeline (float32, CPU): a different batch composition or torch
# thread count changes pixels by ~2e-6 before quantisation, which flips a few uint8
# values by one level. Images compared across those are allowed one level on at most
# 0.5% of values; same composition and threads are compared byte for byte.
MAX_LEVEL_DIFF = 1
MAX_FLIPPED_FRACTION = 5e-3


def pixels(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def assert_images_close(a: bytes, b: bytes) -> None:
    """Equal up to last-bit rounding (see MAX_LEVEL_DIFF / MAX_FLIPPED_FRACTION)."""
    import numpy as np

    pa, pb = pixels(a), pixels(b)
    assert pa.shape == pb.shape
    diff = np.abs(pa - pb)
    assert diff.max() <= MAX_LEVEL_DIFF, f"max level difference {diff.max()}"
    assert (diff > 0).mean() <= MAX_FLIPPED_FRACTION, f"{(diff > 0).mean():.4%} of values differ"


def manifest_rows(out) -> list[dict]:
    """Rows of a batch job's manifest.jsonl ([] before the job wrote one)."""
    import json
    from pathlib import Path

    path = Path(out) / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_outputs_complete(out, indices, per_prompt: int = 1) -> list[dict]:
    """Exactly one image file and one manifest row per expected image, nothing else in images/."""
    from pathlib import Path

    rows = manifest_rows(out)
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files)), "duplicate manifest rows"
    assert sorted(r["index"] for r in rows) == sorted(i for i in indices for _ in range(per_prompt))
    # no temp files, nothing unlisted
    assert sorted(p.name for p in (Path(out) / "images").iterdir()) == sorted(Path(f).name for f in files)
    return rows


def batch_config(prompts, out, **kw):
    """A BatchJobConfig for tests: no progress bar, flat keys as on the CLI."""
    from batch.config import BatchJobConfig

    return BatchJobConfig.from_flat({"prompts": str(prompts), "output": str(out), "progress": False, **kw})
