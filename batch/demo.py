"""``make demo``: build the tiny pipeline, write a prompt file, run a batch job locally.

Runs on an embedded local Ray: one worker per GPU where there are GPUs, two CPU
workers otherwise. Ends by printing the gallery path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SUBJECTS = ["a fox", "a lighthouse", "a bowl of ramen", "a mountain lake", "a robot", "a sailboat", "a cat", "a city"]
STYLES = ["at dawn, watercolor", "in neon light", "as a woodcut print", "on a rainy night"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="demo folder (model, prompts, run/)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    model = out / "tiny-sd"
    if not (model / "model_index.json").exists():
        from ray_diffusion.tiny import build_tiny_pipeline

        print(f"building the tiny random-weight pipeline in {model}")
        build_tiny_pipeline(model, preset="tiny", seed=0)
    prompts = out / "prompts.txt"
    prompts.write_text(
        "# demo prompts: the tiny model has random weights, so expect colourful noise\n"
        + "\n".join(f"{s} {style}" for s in SUBJECTS for style in STYLES)
        + "\n"
    )
    run = out / "run"
    # The demo owns this folder; a fresh run each time shows the whole job.
    shutil.rmtree(run, ignore_errors=True)

    import ray

    from batch.cli import main as batch_main
    from batch.driver import connect_ray

    connect_ray(None)
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        fleet = [] if has_gpus else ["--num-workers", "2", "--gpus-per-worker", "0"]
        return batch_main(
            ["--model", str(model), "--prompts", str(prompts), "--output", str(run), "--steps", "4",
             "--batch-size", "4", "--seed", "0", *fleet]
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
