"""The batch driver: shard a prompt list over worker actors and keep them all busy.

Flow: validate the prompt file (nothing written on bad input) -> check/prepare the
output directory (resume verification) -> connect to Ray -> start one actor per GPU
-> hand out micro-batches (own shard first, then stealing), two calls in flight per
worker so the device never waits on the driver; when micro-batches are fast, one call
carries several (``call_target_s``) -> write each image atomically, then its manifest
row -> summary.json and index.html.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batch.config import BatchJobConfig
from batch.outputs import (
    SUMMARY,
    OutputDir,
    image_name,
    index_width,
    prepare_output,
    sha256,
    write_gallery,
)
from batch.prompts import PromptFile, PromptItem, read_prompt_file, warn_long_prompts
from batch.scheduler import Unit, WorkQueue, group_limit
from ray_diffusion.errors import ConfigError
from ray_diffusion.generation import GenerationRequest, GenerationResult
from ray_diffusion.seeds import image_seed
from ray_diffusion.sharding import micro_batches
from ray_diffusion.worker import FAKE_SCHEME

logger = logging.getLogger(__name__)

PRIMED_PER_WORKER = 2
"""Units in flight per worker: one running, one queued in the actor, so it never waits."""
IMAGE_WRITER_THREADS = 4
"""Threads writing images while the loop keeps dispatching."""
PROBE_RETRY_S = 1.0
"""How often to ask a restarting worker whether it is back."""
MAX_GROUP = 32
"""Most micro-batches in one actor call (see ``BatchJobConfig.call_target_s``)."""


@dataclass(frozen=True)
class ImageTask:
    """One image of the job: image ``k`` of item ``index``."""

    index: int
    k: int
    item: PromptItem
    file: str
    request: GenerationRequest


@dataclass
class JobReport:
    """What a job did; ``exit_code`` is what the CLI returns."""

    exit_code: int
    summary: dict[str, Any]
    gallery: str | None
    missing: list[int] = field(default_factory=list)
    message: str = ""


def build_tasks(prompt_file: PromptFile, images_per_prompt: int) -> list[ImageTask]:
    """Expand items into image tasks (index-major, k-minor), each with its own seed."""
    width = index_width(len(prompt_file.items))
    tasks = []
    for item in prompt_file.items:
        base = item.request
        for k in range(images_per_prompt):
            request = base.model_copy(
                update={"seed": image_seed(base.seed, k), "num_images": 1, "request_id": f"{item.index}/{k}"}
            )
            tasks.append(
                ImageTask(item.index, k, item, image_name(item.index, k, images_per_prompt, width), request)
            )
    return tasks


def fingerprint_inputs(cfg: BatchJobConfig, prompt_file: PromptFile) -> dict[str, Any]:
    """What determines the job's images; resuming with any of it changed is refused.

    Fleet shape (workers, batch size, stealing) is left out: it does not change which
    image a (prompt, seed, params) produces.
    """
    w = cfg.worker
    return {
        "model": w.model,
        "revision": w.revision,
        "variant": w.variant,
        "dtype": w.dtype,
        "scheduler": w.scheduler,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "height": cfg.height,
        "width": cfg.width,
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "images_per_prompt": cfg.images_per_prompt,
        "prompts_sha256": prompt_file.sha256,
    }


def plan_units(tasks: list[ImageTask], pending: set[int], batch_size: int) -> list[Unit]:
    """Micro-batches on the job's global grid, keeping only pending tasks."""
    units = []
    for chunk in micro_batches(len(tasks), batch_size):
        keep = tuple(t for t in chunk if t in pending)
        if keep:
            units.append(Unit(uid=len(units), tasks=keep))
    return units


def compress_ranges(indices: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    parts: list[str] = []
    for i in sorted(set(indices)):
        if parts and i == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ", ".join(parts)


def connect_ray(address: str | None) -> bool:
    """Join the cluster (``address``, else RAY_ADDRESS) or start an embedded one; True if we started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return True
    ray.init(include_dashboard=False, log_to_driver=False)
    return True


@dataclass
class FleetPlan:
    num_workers: int
    num_gpus: float
    num_cpus: float
    num_threads: int
    notice: str = ""


def plan_fleet(cfg: BatchJobConfig, cluster_resources: dict[str, float], can_autoscale: bool = False) -> FleetPlan:
    """How many workers with which resources, from the config and the cluster's totals.

    On a cluster we joined (which may autoscale), an explicit ``num_workers`` asks for
    GPU workers even if no GPU node is up yet, so the autoscaler adds them; otherwise a
    cluster without GPUs gets CPU workers.
    """
    gpus = cluster_resources.get("GPU", 0.0)
    cpus = cluster_resources.get("CPU", 1.0)
    notice = ""
    wants_gpus = cfg.gpus_per_worker > 0 and (gpus >= cfg.gpus_per_worker or (cfg.num_workers and can_autoscale))
    if wants_gpus:
        n = cfg.num_workers or int(gpus // cfg.gpus_per_worker)
        num_gpus, num_cpus = float(cfg.gpus_per_worker), 0.0
        if n * cfg.gpus_per_worker > gpus:
            notice = (
                f"{n} workers x {cfg.gpus_per_worker} GPU need {n * cfg.gpus_per_worker:g} GPUs but the cluster has "
                f"{gpus:g} now; the extra workers start when the autoscaler adds GPU nodes"
            )
    else:
        n = cfg.num_workers or max(1, int(cpus // 2))
        num_gpus, num_cpus = 0.0, min(1.0, cpus / n)
        if cfg.gpus_per_worker > 0:
            notice = (
                f"no GPUs in the Ray cluster: running {n} CPU worker(s) (slow). Give the cluster GPUs "
                "(check `ray status`) or pass --gpus-per-worker 0 to silence this"
            )
    threads = cfg.worker.num_threads or max(1, int(cpus // n))
    return FleetPlan(n, num_gpus, num_cpus, threads, notice)


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int, alive: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(workers=alive, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_job(cfg: BatchJobConfig, echo: Any = print) -> JobReport:
    """Run (or resume) a batch job; raises InputFileError/ConfigError before writing anything."""
    t_start = time.perf_counter()
    prompt_file = read_prompt_file(cfg.prompts, cfg.item_defaults(), cfg.seed, cfg.images_per_prompt)
    if not cfg.model.startswith(FAKE_SCHEME):
        warn_long_prompts(prompt_file, cfg.model)
    tasks = build_tasks(prompt_file, cfg.images_per_prompt)
    inputs = fingerprint_inputs(cfg, prompt_file)
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    out = OutputDir(cfg.output)
    done = prepare_output(out, cfg.resume, fingerprint, inputs)
    try:
        pending = {i for i, t in enumerate(tasks) if t.file not in done}
        units = plan_units(tasks, pending, cfg.batch_size)
        if cfg.resume:
            echo(f"resume: {len(tasks) - len(pending)} of {len(tasks)} images already done, {len(pending)} to generate")
        run = _JobRun(cfg, tasks, out, units, echo) if units else None
        stats = run.execute() if run else _RunStats()
        rows = out.manifest_rows
    finally:
        out.close()

    done_files = {r["file"] for r in rows}
    missing_tasks = [t for t in tasks if t.file not in done_files]
    failed_units = run.queue.failed if run else []
    failed = [
        {"index": tasks[u.tasks[0]].index, "k": tasks[u.tasks[0]].k, "errors": u.errors} for u in failed_units
    ]
    wall = time.perf_counter() - t_start
    generated = stats.generated
    gen_wall = (stats.finished_at - stats.first_ready_at) if stats.first_ready_at and stats.finished_at else 0.0
    steady = (
        stats.last_call_end_at - stats.first_call_at if stats.first_call_at and stats.last_call_end_at else 0.0
    )
    busy = [w["busy_s"] for w in stats.workers.values() if w["images"]]
    compute_mean = sum(busy) / max(1, stats.num_workers)
    import resource

    summary = {
        "started_at": time.time() - wall,
        "model": cfg.model,
        "config_fingerprint": fingerprint,
        "config": json.loads(cfg.model_dump_json()),
        "items": len(prompt_file.items),
        "images_expected": len(tasks),
        "images_done": len(done_files),
        "images_generated": generated,
        "images_resumed": len(tasks) - len(pending),
        "images_missing": len(missing_tasks),
        "failed": failed,
        "missing_indices": sorted({t.index for t in missing_tasks}),
        "wall_s": wall,
        "generation_wall_s": gen_wall,
        "images_per_s": generated / gen_wall if gen_wall > 0 else 0.0,
        "first_call_at": stats.first_call_at,
        "last_call_end_at": stats.last_call_end_at,
        "steady_state_s": steady,
        "steady_images_per_s": generated / steady if steady > 0 else 0.0,
        # Throughput once the whole fleet is up: what N workers sustain, without the
        # start-up stagger of their processes (which the steady-state window includes).
        "full_fleet_images_per_s": (
            stats.images_after_all_ready / (stats.last_call_end_at - stats.all_ready_epoch)
            if stats.all_ready_epoch and stats.last_call_end_at and stats.last_call_end_at > stats.all_ready_epoch
            else 0.0
        ),
        "compute_s_mean": compute_mean,
        "overhead_pct": 100.0 * (steady - compute_mean) / steady if steady > 0 else 0.0,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "startup_s": (stats.first_ready_at - t_start) if stats.first_ready_at else None,
        "ray_init_s": stats.ray_init_s,
        "all_workers_ready_s": (stats.all_ready_at - t_start) if stats.all_ready_at else None,
        "workers": stats.workers,
        "num_workers": stats.num_workers,
        "worker_restarts": stats.restarts,
        "worker_calls": stats.calls,
        "serve_app": cfg.serve_app,
        "steal": cfg.steal,
        "batch_size": cfg.batch_size,
    }
    out.write_json(SUMMARY, summary)
    gallery = write_gallery(out, rows, f"ray-diffusion batch · {cfg.model}")
    missing_idx = summary["missing_indices"]
    if missing_idx:
        reason = stats.stop_reason or "some items failed"
        message = f"job incomplete: {reason}; missing item indices: {compress_ranges(missing_idx)}"
        return JobReport(1, summary, gallery, missing_idx, message)
    return JobReport(0, summary, gallery)


@dataclass
class _RunStats:
    generated: int = 0
    first_ready_at: float | None = None
    all_ready_at: float | None = None
    finished_at: float | None = None
    ray_init_s: float = 0.0
    num_workers: int = 0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: int = 0
    calls: int = 0
    first_call_at: float | None = None
    last_call_end_at: float | None = None
    all_ready_epoch: float | None = None
    images_after_all_ready: int = 0
    stop_reason: str = ""


class ActorFleet:
    """Worker slots backed by our own actors, one per GPU (or per k GPUs)."""

    def __init__(self, cfg: BatchJobConfig, ray: Any, echo: Any, can_autoscale: bool = False):
        from batch.actor import BatchWorkerActor

        self.ray = ray
        plan = plan_fleet(cfg, ray.cluster_resources(), can_autoscale)
        if plan.notice:
            echo(f"notice: {plan.notice}")
        worker_cfg = cfg.worker.model_copy(update={"num_threads": plan.num_threads})
        self.max_group = MAX_GROUP
        self.actors = [
            BatchWorkerActor.options(
                num_gpus=plan.num_gpus,
                num_cpus=plan.num_cpus,
                max_restarts=cfg.max_worker_restarts,
                max_task_retries=0,  # the driver re-queues work itself, exactly once
                scheduling_strategy="SPREAD",
            ).remote(worker_cfg, f"worker-{w}")
            for w in range(plan.num_workers)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    def ready(self, w: int) -> Any:
        return self.actors[w].ready.remote()

    def submit(self, w: int, units: list[list[GenerationRequest]], submitted_at: float) -> Any:
        return self.actors[w].generate_units.remote(units, submitted_at)

    def outcomes(self, value: Any) -> list[list[GenerationResult] | str]:
        return value

    def stats(self, w: int) -> Any:
        return self.actors[w].stats.remote()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


class ServeFleet:
    """Worker slots that send micro-batches to a running Serve app's model deployment.

    One slot per running replica; Serve routes each call to a replica, so online
    traffic and batch jobs share one GPU fleet. Replicas belong to Serve, not to us.
    """

    def __init__(self, app_name: str, ray: Any, echo: Any):
        from ray import serve

        from serve_app.app import MODEL_DEPLOYMENT

        try:
            status = serve.status().applications[app_name]
        except KeyError:
            raise ConfigError(f"serve_app: no Serve application named {app_name!r} is running; see `serve status`") from None
        deployment = status.deployments.get(MODEL_DEPLOYMENT)
        if deployment is None:
            raise ConfigError(f"serve_app: application {app_name!r} has no {MODEL_DEPLOYMENT} deployment")
        replicas = sum(deployment.replica_states.get(state, 0) for state in ("RUNNING",))
        self.slots = max(1, replicas)
        self.max_group = 1
        self.handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app_name)
        echo(f"sending micro-batches to Serve app {app_name!r} ({self.slots} replica(s))")

    def __len__(self) -> int:
        return self.slots

    def ready(self, w: int) -> Any:
        return self.handle.describe.remote()._to_object_ref_sync()

    def submit(self, w: int, units: list[list[GenerationRequest]], submitted_at: float) -> Any:
        (requests,) = units  # max_group = 1: Serve routes each call to a replica on its own
        return self.handle.generate_micro_batch.remote(requests)._to_object_ref_sync()

    def outcomes(self, value: Any) -> list[list[GenerationResult] | str]:
        return [value]

    def stats(self, w: int) -> Any:
        return self.handle.stats.remote()._to_object_ref_sync()

    def close(self) -> None:
        pass


class _JobRun:
    """The Ray part of a job: actors, the dispatch loop, failure handling."""

    def __init__(self, cfg: BatchJobConfig, tasks: list[ImageTask], out: OutputDir, units: list[Unit], echo: Any):
        self.cfg, self.tasks, self.out, self.units, self.echo = cfg, tasks, out, units, echo
        self.task_by_request = {t.request.request_id: i for i, t in enumerate(tasks)}
        self.stats = _RunStats()
        self.queue: WorkQueue = WorkQueue([], 0)
        self._seq = 0
        self._unit_s: dict[int, float] = {}
        self._writer = ThreadPoolExecutor(max_workers=IMAGE_WRITER_THREADS, thread_name_prefix="image-writer")
        self._writes: list[tuple[Future[None], dict[str, Any]]] = []

    def execute(self) -> _RunStats:
        import ray

        t0 = time.perf_counter()
        started = connect_ray(self.cfg.address)
        self.stats.ray_init_s = time.perf_counter() - t0
        # Only a cluster we joined can grow; an embedded local Ray is what it is.
        can_autoscale = not started or bool(self.cfg.address or os.environ.get("RAY_ADDRESS"))
        try:
            with self._writer:
                return self._dispatch(ray, can_autoscale)
        finally:
            if started:
                ray.shutdown()

    def _dispatch(self, ray: Any, can_autoscale: bool) -> _RunStats:
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

        try:
            from ray.exceptions import ActorUnavailableError
        except ImportError:  # older Ray
            ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

        cfg, st = self.cfg, self.stats
        fleet = (
            ServeFleet(cfg.serve_app, ray, self.echo)
            if cfg.serve_app
            else ActorFleet(cfg, ray, self.echo, can_autoscale)
        )
        n = len(fleet)
        st.num_workers = n
        self.queue = queue = WorkQueue(self.units, n, steal=cfg.steal, max_item_retries=cfg.max_item_retries)
        alive: set[int] = set()
        restarts = [0] * n
        ever_ready: set[int] = set()
        probes: dict[Any, int] = {fleet.ready(w): w for w in range(n)}
        deferred: list[tuple[float, int]] = []
        inflight: dict[Any, tuple[int, list[Unit], int]] = {}
        worker_refs: list[deque[Any]] = [deque() for _ in range(n)]
        # Keyed by the worker's own id (actor or Serve replica), filled as they report.
        per_worker: dict[str, dict[str, Any]] = {}
        st.workers = per_worker

        def record(worker_id: str) -> dict[str, Any]:
            return per_worker.setdefault(
                worker_id, {"images": 0, "busy_s": 0.0, "load_s": None, "node": None, "restarts": 0}
            )

        last_error = ""
        total = sum(len(u.tasks) for u in self.units)
        progress = _Progress(total, cfg.progress)
        waiting_since = time.monotonic()

        def submit(w: int) -> None:
            while len(worker_refs[w]) < PRIMED_PER_WORKER:
                group = queue.next_group(w, self._group_limit(w, fleet.max_group, len(alive)))
                if not group:
                    return
                requests = [[self.tasks[t].request for t in unit.tasks] for unit in group]
                ref = fleet.submit(w, requests, time.time())
                self._seq += 1
                inflight[ref] = (w, group, self._seq)
                worker_refs[w].append(ref)

        def worker_lost(w: int, failed_ref: Any, reason: str) -> None:
            alive.discard(w)
            refs = list(worker_refs[w])
            if failed_ref is not None and failed_ref not in refs:
                refs.append(failed_ref)
            worker_refs[w].clear()
            entries = sorted((inflight.pop(r) for r in refs if r in inflight), key=lambda e: e[2])
            for i, (_, group, _) in enumerate(entries):
                # Actor tasks run in order: only the oldest call was running when it died.
                if i > 0:
                    for unit in group:
                        queue.requeue(unit)
                elif len(group) == 1:
                    queue.fail(group[0], reason)
                else:
                    # Which of its micro-batches crashed it is unknown: each reruns alone,
                    # where a crash is charged to the one that caused it.
                    for unit in group:
                        queue.requeue(unit, isolate=True)
            queue.release_shard(w)
            if not alive:
                nonlocal waiting_since
                waiting_since = time.monotonic()  # the start timeout now covers the restarts
            if restarts[w] < cfg.max_worker_restarts:
                restarts[w] += 1
                st.restarts += 1
                probes[fleet.ready(w)] = w
            for v in list(alive):
                submit(v)

        try:
            while queue.queued() or inflight:
                now = time.monotonic()
                for item in [d for d in deferred if d[0] <= now]:
                    deferred.remove(item)
                    probes[fleet.ready(item[1])] = item[1]
                if not inflight and not probes and not deferred:
                    st.stop_reason = f"all {n} workers are gone (last error: {last_error or 'none'})"
                    break
                if not alive and not inflight and time.monotonic() - waiting_since > cfg.worker_start_timeout_s:
                    st.stop_reason = (
                        f"no worker became ready within {cfg.worker_start_timeout_s:g}s "
                        f"(last error: {last_error or 'none'}); check `ray status` for pending actors"
                    )
                    break
                refs = [*inflight, *probes]
                if not refs:
                    time.sleep(PROBE_RETRY_S / 4)  # only deferred probes are left
                    continue
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                if not ready:
                    continue
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in probes:
                        w = probes.pop(ref)
                        try:
                            info = ray.get(ref)
                        except ActorUnavailableError as exc:
                            # Restarting (e.g. waiting for a node to host it): ask again shortly.
                            last_error = _short(exc)
                            deferred.append((time.monotonic() + PROBE_RETRY_S, w))
                            continue
                        except (RayActorError, RayTaskError) as exc:
                            last_error = _short(exc)
                            logger.warning("worker-%d could not start: %s", w, last_error)
                            continue
                        alive.add(w)
                        waiting_since = time.monotonic()
                        rec = record(info["worker_id"])
                        if rec["load_s"] is not None:
                            rec["restarts"] += 1
                        rec["load_s"], rec["node"] = info.get("load_s"), info["node_id"]
                        rec.update(device=info["device"], dtype=info["dtype"], notes=info.get("placement_notes", []),
                                   visible_gpus=info.get("visible_gpus"))
                        now = time.perf_counter()
                        st.first_ready_at = st.first_ready_at or now
                        ever_ready.add(w)
                        if len(ever_ready) == n and st.all_ready_at is None:
                            st.all_ready_at = now
                            st.all_ready_epoch = time.time()
                        submit(w)
                        continue
                    if ref not in inflight:
                        continue  # already re-queued when its worker was declared lost
                    w, group, _ = inflight[ref]
                    try:
                        outcomes = fleet.outcomes(ray.get(ref))
                    except (RayActorError, ActorUnavailableError) as exc:
                        last_error = _short(exc)
                        logger.warning("worker-%d died: %s", w, last_error)
                        worker_lost(w, ref, last_error)
                        continue
                    except ObjectLostError as exc:
                        inflight.pop(ref)
                        worker_refs[w].remove(ref)
                        for unit in group:
                            queue.requeue(unit)
                        last_error = _short(exc)
                        submit(w)
                        continue
                    except RayTaskError as exc:
                        outcomes = [_short(exc)] * len(group)
                    inflight.pop(ref)
                    worker_refs[w].remove(ref)
                    st.calls += 1
                    self._time_units(w, outcomes)
                    failures = 0
                    for unit, outcome in zip(group, outcomes, strict=True):
                        if isinstance(outcome, str):
                            last_error = outcome
                            logger.warning("worker-%d failed a batch: %s", w, outcome)
                            queue.fail(unit, outcome)
                            failures += 1
                    submit(w)  # top up before writing, so the worker never waits on our I/O
                    if failures:
                        for v in list(alive):  # re-queued work may go to any idle worker
                            submit(v)
                    for outcome in outcomes:
                        if not isinstance(outcome, str):
                            self._write_results(outcome, record)
                written = self._commit_written(wait=False)
                st.generated += written
                progress.update(written, len(alive))
        finally:
            st.generated += self._commit_written(wait=True)
            progress.close()
            st.finished_at = time.perf_counter()
            for w in sorted(alive):  # peak memory of the workers still up
                try:
                    stats = ray.get(fleet.stats(w), timeout=10)
                    record(stats["worker_id"])["peak_rss_mb"] = stats["peak_rss_mb"]
                except Exception:  # a worker dying at the very end only costs us the number
                    pass
            fleet.close()
        return st

    def _group_limit(self, w: int, max_group: int, alive: int) -> int:
        return group_limit(self.cfg.call_target_s, self._unit_s.get(w), max_group, self.queue.queued(), alive,
                           PRIMED_PER_WORKER)

    def _time_units(self, w: int, outcomes: list[Any]) -> None:
        """Smoothed seconds per micro-batch (one pipeline call) of worker ``w``: a slow
        worker gets smaller groups, so every call lasts about ``call_target_s``."""
        for outcome in outcomes:
            if isinstance(outcome, str) or not outcome:
                continue
            unit_s = outcome[0].timings.generate_s
            prev = self._unit_s.get(w)
            self._unit_s[w] = unit_s if prev is None else 0.8 * prev + 0.2 * unit_s

    def _commit_written(self, wait: bool) -> int:
        """Append the manifest rows of images whose write finished; return how many.

        Only this (the loop's) thread touches the manifest, and only after the image's
        rename, so a row always means a complete file.
        """
        rows, still = [], []
        for future, row in self._writes:
            if wait or future.done():
                future.result()  # a failed write (disk full...) stops the job loudly
                rows.append(row)
            else:
                still.append((future, row))
        self._writes = still
        self.out.append_manifest(rows)
        return len(rows)

    def _write_results(self, results: list[GenerationResult], record: Any) -> None:
        for r in results:
            task = self.tasks[self.task_by_request[r.request_id]]
            # File I/O releases the GIL: a few writer threads overlap it with dispatching.
            future = self._writer.submit(self.out.write_atomic, task.file, r.png)
            rec = record(r.worker_id)
            rec["busy_s"] += r.timings.generate_s / r.timings.batch_images
            rec["images"] += 1
            st = self.stats
            end = r.timings.started_at + r.timings.generate_s
            st.first_call_at = min(st.first_call_at or r.timings.started_at, r.timings.started_at)
            st.last_call_end_at = max(st.last_call_end_at or end, end)
            if st.all_ready_epoch is not None and r.timings.started_at >= st.all_ready_epoch:
                st.images_after_all_ready += 1
            self._writes.append((future, {
                    "index": task.index,
                    "k": task.k,
                    "id": task.item.item_id,
                    "prompt": r.prompt,
                    "negative_prompt": r.negative_prompt,
                    "seed": r.seed,
                    "steps": r.num_inference_steps,
                    "guidance_scale": r.guidance_scale,
                    "height": r.height,
                    "width": r.width,
                    "model": r.model,
                    "scheduler": r.scheduler,
                    "dtype": r.dtype,
                    "file": task.file,
                    "sha256": sha256(r.png),
                    "worker": r.worker_id,
                    "node": r.node_id,
                    "timings": r.timings.model_dump(),
                }))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__
