"""Build a tiny random-weight Stable Diffusion pipeline for tests, demos and benchmarks.

No model hub is reachable at run time, so the project makes its own model: real
diffusers/transformers classes with tiny, seeded random weights, written with
``save_pretrained`` so that every caller goes through the real ``from_pretrained`` path.

    python -m ray_diffusion.tiny OUT_DIR [--preset tiny|bench] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyPreset:
    """Sizes of one tiny pipeline variant."""

    unet_channels: tuple[int, ...]
    """UNet block_out_channels."""
    vae_channels: tuple[int, ...]
    """VAE block_out_channels (the VAE downsamples 2**(len-1) times)."""
    text_hidden: int
    """CLIP text encoder hidden size."""
    text_layers: int
    """CLIP text encoder layers."""
    layers_per_block: int = 1
    """Resnet layers per UNet block."""


PRESETS: dict[str, TinyPreset] = {
    # ~0.6 MB on disk; a 64x64 image in 4 steps costs a few ms on one CPU thread.
    "tiny": TinyPreset(unet_channels=(8, 16), vae_channels=(8, 16), text_hidden=16, text_layers=2),
    # Heavier denoiser for benchmarks: ~120 ms per image on one CPU thread at 64x64 / 4
    # steps (measured, batch of 4), so compute dominates scheduling overheads.
    "bench": TinyPreset(
        unet_channels=(64, 128),
        vae_channels=(16, 32, 32),
        text_hidden=64,
        text_layers=2,
        layers_per_block=2,
    ),
}

IMAGE_SIZE = 64
"""Native image side of every preset (the UNet sample size times the VAE scale factor)."""


def _byte_symbols() -> list[str]:
    """The 256 printable symbols GPT-2/CLIP byte-level BPE uses for the 256 bytes.

    transformers 5 no longer exports ``bytes_to_unicode``; this is the same table.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _byte_vocab() -> dict[str, int]:
    """Every byte symbol, the same with CLIP's end-of-word suffix, and the specials.

    With an empty merges file CLIPTokenizer then tokenizes any text character by
    character, which is all a random-weight model needs.
    """
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    return vocab


def build_tiny_pipeline(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight StableDiffusionPipeline to ``out_dir`` and return the path.

    The weights are a pure function of ``(preset, seed)``.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, e.g. 'tiny'; got {preset!r}")
    p = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    vae_scale = 2 ** (len(p.vae_channels) - 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=p.unet_channels,
        layers_per_block=p.layers_per_block,
        sample_size=IMAGE_SIZE // vae_scale,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(p.unet_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(p.unet_channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=p.text_hidden,
        norm_num_groups=min(8, p.unet_channels[0]),
        attention_head_dim=2,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=p.vae_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(p.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(p.vae_channels),
        latent_channels=4,
        norm_num_groups=min(8, p.vae_channels[0]),
        sample_size=IMAGE_SIZE,
    )

    tok_dir = out / "_tokenizer_src"
    tok_dir.mkdir(exist_ok=True)
    vocab = _byte_vocab()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    # model_max_length must be set: without it CLIPTokenizer overflows at call time.
    tokenizer = CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"),
        merges=str(tok_dir / "merges.txt"),
        model_max_length=77,
    )

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=p.text_hidden,
            intermediate_size=2 * p.text_hidden,
            num_hidden_layers=p.text_layers,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab[_BOS],
            eos_token_id=vocab[_EOS],
            pad_token_id=vocab[_EOS],
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_diffusion.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="directory to write the pipeline to")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)
    path = build_tiny_pipeline(args.out_dir, preset=args.preset, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
