"""Pure sharding functions with accelerate's ``split_between_processes`` semantics.

``q, r = divmod(len(items), num_shards)``: shard ``k`` is the contiguous slice that
starts at ``k*q + min(k, r)`` and holds ``q + (k < r)`` items, so the first ``r``
shards are one item longer. More shards than items gives empty shards, never a
duplicate, unless padding is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def shard_bounds(num_items: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """``(start, stop)`` of shard ``shard_index`` when ``num_items`` are split ``num_shards`` ways."""
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, e.g. 4; got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    q, r = divmod(num_items, num_shards)
    start = shard_index * q + min(shard_index, r)
    return start, start + q + (1 if shard_index < r else 0)


@dataclass(frozen=True)
class Shard(Generic[T]):
    """One process's share of the input.

    ``items`` has the input's type (a list, or a dict of equal-length lists);
    ``padding`` marks the entries added by ``apply_padding`` so callers can drop them.
    """

    items: T
    start: int
    """Global index of the first real item."""
    stop: int
    """Global index one past the last real item."""
    padding: tuple[bool, ...]
    """One flag per entry of ``items``: True where the entry is padding."""

    @property
    def num_padded(self) -> int:
        return sum(self.padding)


def _pad(values: Sequence[Any], target: int, fill: Any) -> list[Any]:
    return list(values) + [fill] * (target - len(values))


def shard_prompts(items: T, num_shards: int, shard_index: int, apply_padding: bool = False) -> Shard[T]:
    """Shard ``items`` (a sequence, or a dict of equal-length sequences) for one process.

    With ``apply_padding`` every shard has ``q + (r > 0)`` entries: short shards repeat
    the input's last item (accelerate's rule), and those entries are flagged in
    ``Shard.padding``. The caller's dict is never mutated.
    """
    if isinstance(items, Mapping):
        lengths = {key: len(value) for key, value in items.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all values of a dict must have the same length, got {lengths}")
        n = next(iter(lengths.values()), 0)
    elif isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        n = len(items)
    else:
        raise TypeError(f"items must be a sequence or a dict of sequences, got {type(items).__name__}")

    start, stop = shard_bounds(n, num_shards, shard_index)
    q, r = divmod(n, num_shards)
    target = q + (1 if r > 0 else 0)
    num_real = stop - start
    pad = target - num_real if apply_padding and n > 0 else 0
    flags = (False,) * num_real + (True,) * pad

    def take(values: Sequence[Any]) -> Any:
        part = values[start:stop]
        if not pad:
            return part
        # accelerate's rule: pad with the last item of the whole input.
        return _pad(part, target, values[n - 1])

    if isinstance(items, Mapping):
        sharded: Any = {key: take(value) for key, value in items.items()}
    else:
        sharded = take(items)
    return Shard(items=sharded, start=start, stop=stop, padding=flags)


def micro_batches(num_items: int, batch_size: int) -> list[range]:
    """Cut ``range(num_items)`` into consecutive chunks of ``batch_size`` (the last may be short).

    The batch driver cuts the whole job on this global grid first and then shards the
    chunks, so which items share a pipeline call does not depend on how many workers
    ran or who stole what; images are then bit-identical across worker counts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, e.g. 4; got {batch_size}")
    return [range(i, min(i + batch_size, num_items)) for i in range(0, num_items, batch_size)]
