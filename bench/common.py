"""Shared plumbing of the benchmarks: results JSON, tables, plots, machine facts."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
PY = sys.executable


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "ray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        **versions,
    }


def save(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **data}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table (also valid Markdown)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def plot_path(name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}.png"


def tiny_model(preset: str) -> Path:
    """The project's random-weight pipeline for benchmarks, built once under bench/.cache."""
    from ray_diffusion.tiny import build_tiny_pipeline

    path = CACHE / f"model-{preset}"
    if not (path / "model_index.json").exists():
        build_tiny_pipeline(path, preset=preset, seed=0)
    return path


def prompt_file(n: int, name: str = "prompts") -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-{n}.txt"
    subjects = ["a fox", "a lighthouse", "a bowl of ramen", "a mountain lake", "a robot", "a sailboat"]
    path.write_text("\n".join(f"{subjects[i % len(subjects)]}, variation {i}" for i in range(n)) + "\n")
    return path
