"""The peers of benchmark 1: plain loop, accelerate recipe, torch.distributed recipe.

    python bench/peer_loop.py --mode plain ...
    accelerate launch --cpu --num_processes 2 bench/peer_loop.py --mode accelerate ...
    torchrun --nproc_per_node 2 bench/peer_loop.py --mode torchrun ...

Each process loads the pipeline, takes its contiguous shard (accelerate's
split_between_processes, or rank-based divmod sharding for torchrun), loops over
micro-batches, saves PNGs, and prints one ``PEER_STATS {json}`` line with its timings.
Deliberately independent of ray_diffusion: this is what users run without us.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time
from pathlib import Path


def seed_of(job_seed: int, index: int) -> int:
    # Same rule as ray_diffusion.seeds.derive_seed, so every method renders the same images.
    return int.from_bytes(hashlib.blake2b(f"{job_seed}:{index}".encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["plain", "accelerate", "torchrun"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import psutil
    import torch

    proc_start = psutil.Process().create_time()
    torch.set_num_threads(args.threads)
    prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    items = list(enumerate(prompts))

    if args.mode == "accelerate":
        from accelerate import PartialState

        state = PartialState(cpu=args.device == "cpu")  # gloo on CPU
        rank, world = state.process_index, state.num_processes
        with state.split_between_processes(items) as shard:
            shard = list(shard)
    elif args.mode == "torchrun":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        q, r = divmod(len(items), world)
        start = rank * q + min(rank, r)
        shard = items[start : start + q + (1 if rank < r else 0)]
    else:
        rank, world, shard = 0, 1, items

    from diffusers import DiffusionPipeline

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = last = None
    busy = 0.0
    for i in range(0, len(shard), args.batch_size):
        chunk = shard[i : i + args.batch_size]
        gens = [torch.Generator().manual_seed(seed_of(args.seed, idx)) for idx, _ in chunk]
        t0 = time.time()
        images = pipe(
            prompt=[text for _, text in chunk], generator=gens, num_inference_steps=args.steps,
            height=args.size, width=args.size, output_type="pil",
        ).images
        for (idx, _), image in zip(chunk, images):
            image.save(out / f"{idx:05d}.png")
        t1 = time.time()
        busy += t1 - t0
        first = t0 if first is None else first
        last = t1
    stats = {
        "mode": args.mode, "rank": rank, "world": world, "images": len(shard),
        "proc_start": proc_start, "loaded": loaded, "first": first, "last": last, "busy_s": busy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("PEER_STATS " + json.dumps(stats), flush=True)
    if args.mode == "torchrun":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
