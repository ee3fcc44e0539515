"""``python -m batch``: command line of the batch driver.

Kept import-light: ``--help`` and argument errors never import torch or Ray.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

EPILOG = """\
exit status: 0 all images written; 1 job incomplete (failed items or no workers left;
the missing indices are printed and --resume continues); 2 bad input or configuration
(nothing written).

examples:
  python -m batch --model ./tiny --prompts prompts.txt --output out/
  ray job submit --working-dir . -- python -m batch --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --dtype float16 --prompts prompts.jsonl --output s3://bucket/run1
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m batch",
        description="Generate images for a prompt list on a Ray cluster (one worker per GPU).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override --config
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--model", help="hub id or local pipeline directory")
    io.add_argument("--prompts", help="prompt file: .txt, .jsonl or .csv (path or fsspec URL)")
    io.add_argument("--output", help="output directory (path or fsspec URL); must be empty unless --resume")
    io.add_argument("--config", help="YAML file with the same keys as these flags (flags override it)")
    io.add_argument("--resume", action="store_true", help="continue a job in --output, redoing only missing/corrupt images")

    gen = p.add_argument_group("generation (defaults for items that do not set their own)")
    gen.add_argument("--steps", type=int, help="denoising steps (default 30)")
    gen.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default 7.5)")
    gen.add_argument("--height", type=int, help="image height, multiple of 8 (default: model's native)")
    gen.add_argument("--width", type=int, help="image width, multiple of 8 (default: model's native)")
    gen.add_argument("--negative-prompt", help="negative prompt")
    gen.add_argument("--seed", type=int, help="job seed; items without a seed get derive_seed(seed, index) (default 0)")
    gen.add_argument("--images-per-prompt", type=int, help="images per prompt, saved as <index>-<k>.png (default 1)")

    model = p.add_argument_group("model loading")
    model.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="weights dtype (default auto)")
    model.add_argument("--scheduler", help="diffusers scheduler class, e.g. EulerDiscreteScheduler")
    model.add_argument("--revision", help="hub revision")
    model.add_argument("--variant", help="weights variant, e.g. fp16")
    model.add_argument("--local-files-only", action="store_true", help="never download; use local files/cache")
    model.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    model.add_argument("--attention-slicing", action="store_true", help="slice attention to save memory")
    model.add_argument("--vae-tiling", action="store_true", help="tile the VAE decode for large images")
    model.add_argument("--num-threads", type=int, help="torch CPU threads per worker (default cores / workers)")

    fleet = p.add_argument_group("cluster and scheduling")
    fleet.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else an embedded local Ray)")
    fleet.add_argument("--serve-app", help="use the model replicas of this running Serve app instead of own actors")
    fleet.add_argument("--num-workers", type=int, help="worker actors (default: one per GPU; CPU workers if none)")
    fleet.add_argument("--gpus-per-worker", type=int, help="GPUs per worker; >1 uses device_map='balanced'; 0 = CPU")
    fleet.add_argument("--batch-size", type=int, help="images per pipeline call (default 4)")
    fleet.add_argument("--no-steal", dest="steal", action="store_false", help="static split only, no work stealing")
    fleet.add_argument("--call-target-s", type=float,
                       help="group fast micro-batches into worker calls of about this many seconds (default 2; 0 = off)")
    fleet.add_argument("--max-item-retries", type=int, help="retries of a failing item before it is reported (default 2)")
    fleet.add_argument("--max-worker-restarts", type=int, help="restarts of a crashed worker actor (default 3)")
    fleet.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def load_yaml(path: str) -> dict[str, Any]:
    """Read a --config file; errors name the file and line."""
    import yaml

    from ray_diffusion.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(args: argparse.Namespace) -> Any:
    """Merge --config and flags into a BatchJobConfig (flags win)."""
    from batch.config import BatchJobConfig

    flags = vars(args).copy()
    values = load_yaml(flags.pop("config")) if "config" in flags else {}
    values.update(flags)
    return BatchJobConfig.from_flat(values)


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("images", f"{summary['images_done']}/{summary['images_expected']} "
                   f"({summary['images_generated']} generated, {summary['images_resumed']} resumed)"),
        ("wall time", f"{summary['wall_s']:.1f}s (startup {summary['startup_s'] or 0:.1f}s)"),
        ("throughput", f"{summary['images_per_s']:.2f} images/s"),
        ("workers", str(summary["num_workers"])),
    ]
    for wid, rec in sorted(summary["workers"].items()):
        if not rec["images"] and rec.get("load_s") is None:
            continue
        load = f"{rec['load_s']:.1f}s" if rec.get("load_s") is not None else "-"
        rows.append((f"  {wid}", f"{rec['images']} images, busy {rec['busy_s']:.1f}s, load {load}, "
                                 f"restarts {rec.get('restarts', 0)}"))
    if summary["failed"]:
        rows.append(("failed", ", ".join(f"{f['index']}" for f in summary["failed"])))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("batch").setLevel(logging.INFO)

    from ray_diffusion.errors import ConfigError, InputFileError

    try:
        cfg = resolve_config(args)
        from batch.driver import run_job

        report = run_job(cfg)
    except (InputFileError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(report.summary)
    if report.exit_code:
        print(report.message, file=sys.stderr)
        print("rerun with --resume to finish the missing items", file=sys.stderr)
    print(f"gallery: {report.gallery}")
    return report.exit_code
