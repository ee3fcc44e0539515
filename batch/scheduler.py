"""The driver's work queue: static shards first, then stealing, with failure bookkeeping.

Pure Python and deterministic, so it is unit-tested without Ray. Units of work are
micro-batches of image tasks cut on the job's global grid; each worker starts on its
own contiguous shard of units (accelerate's ``split_between_processes`` rule).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ray_diffusion.sharding import shard_bounds


@dataclass
class Unit:
    """A micro-batch: task positions that go to one worker in one call."""

    uid: int
    tasks: tuple[int, ...]
    attempts: int = 0
    """Failed attempts charged to this unit."""
    errors: list[str] = field(default_factory=list)
    isolate: bool = False
    """Send alone in its own call: it shared a call with a worker crash of unknown cause."""


class WorkQueue:
    """Hands units to workers: own shard, then orphans and stolen tails."""

    def __init__(self, units: list[Unit], num_workers: int, steal: bool = True, max_item_retries: int = 2):
        self.steal = steal
        self.max_item_retries = max_item_retries
        self.shards: list[deque[Unit]] = []
        for w in range(num_workers):
            start, stop = shard_bounds(len(units), num_workers, w)
            self.shards.append(deque(units[start:stop]))
        # Work whose worker is gone; any live worker takes it first, stealing or not.
        self.orphans: deque[Unit] = deque()
        self.failed: list[Unit] = []
        self._next_uid = max((u.uid for u in units), default=-1) + 1

    @property
    def num_workers(self) -> int:
        return len(self.shards)

    def add_worker(self) -> int:
        """Register a new worker (e.g. on a node that joined); it starts with an empty shard."""
        self.shards.append(deque())
        return len(self.shards) - 1

    def queued(self) -> int:
        return len(self.orphans) + sum(len(s) for s in self.shards)

    def next_for(self, worker: int) -> Unit | None:
        """The next unit for ``worker``, or None if it should idle."""
        group = self.next_group(worker, 1)
        return group[0] if group else None

    def next_group(self, worker: int, limit: int) -> list[Unit]:
        """Up to ``limit`` units for one call of ``worker`` (empty: it should idle).

        Taken one by one in ``next_for`` order: orphans, own shard, then the tail of the
        largest shard. An ``isolate`` unit always makes a group of its own.
        """
        group: list[Unit] = []
        while len(group) < limit:
            source = self._source(worker)
            if source is None:
                break
            queue, from_tail = source
            unit = queue[-1] if from_tail else queue[0]
            if unit.isolate and group:
                break
            if from_tail:
                queue.pop()
            else:
                queue.popleft()
            group.append(unit)
            if unit.isolate:
                break
        return group

    def _source(self, worker: int) -> tuple[deque[Unit], bool] | None:
        """Where ``worker``'s next unit comes from, and whether from the tail."""
        if self.orphans:
            return self.orphans, False
        if self.shards[worker]:
            return self.shards[worker], False
        if not self.steal:
            return None
        victim = max(range(len(self.shards)), key=lambda v: len(self.shards[v]))
        if self.shards[victim]:
            # From the tail, so the victim keeps working through its shard in order.
            return self.shards[victim], True
        return None

    def release_shard(self, worker: int) -> None:
        """``worker`` is gone (maybe only until a restart): its queued shard becomes orphaned."""
        self.orphans.extend(self.shards[worker])
        self.shards[worker].clear()

    def requeue(self, unit: Unit, isolate: bool = False) -> None:
        """Put back a unit that was in flight on a worker that died, without charging it.

        ``isolate``: it shared the call that was running when the worker died, so it may
        be the cause; it runs alone next time, where a crash is charged to it alone.
        """
        unit.isolate = unit.isolate or isolate
        self.orphans.append(unit)

    def fail(self, unit: Unit, error: str) -> list[Unit]:
        """Charge a failed attempt to ``unit``; return what goes back in the queue.

        A multi-task unit is retried whole once (its worker may have died for reasons
        unrelated to its contents, e.g. node loss), then split into single tasks so a
        poison item is isolated. A single task is retried ``max_item_retries`` times,
        then recorded as failed.
        """
        unit.attempts += 1
        unit.errors.append(error)
        if len(unit.tasks) > 1 and unit.attempts >= 2:
            singles = []
            for t in unit.tasks:
                singles.append(Unit(uid=self._next_uid, tasks=(t,)))
                self._next_uid += 1
            self.orphans.extend(singles)
            return singles
        if len(unit.tasks) == 1 and unit.attempts > self.max_item_retries:
            self.failed.append(unit)
            return []
        self.orphans.append(unit)
        return [unit]


TAIL_SHARE_DIVISOR = 2
"""A call carries at most half of its even share of the queue (see ``group_limit``)."""


def group_limit(target_s: float, unit_s: float | None, max_group: int, queued: int, workers: int,
                calls_per_worker: int) -> int:
    """Micro-batches per call: enough to last ``target_s``, fewer near the end of the queue.

    One until a micro-batch has been timed (``unit_s``). Near the end the groups shrink: a
    call takes at most half of its even share of what is queued (``workers`` x
    ``calls_per_worker`` calls), so that a worker at half speed still finishes its calls in
    flight about when the others drain the queue, and stealing can balance the tail.
    (Measured with bench_stragglers / bench_scaling: a quarter costs N = 64 ~3 % of
    throughput, a whole share costs the half-speed worker's job ~10 %.)
    """
    if max_group <= 1 or target_s <= 0 or not unit_s:
        return 1
    limit = min(max_group, max(1, int(target_s / unit_s)))
    share = queued // (max(1, workers) * calls_per_worker * TAIL_SHARE_DIVISOR)
    return max(1, min(limit, share))
