"""The Serve application: a CPU FastAPI ingress bound to a GPU model deployment.

    serve run serve_app.app:build_app model=/path/to/model max_batch_size=4
    serve run serve_app/config.yaml

The model deployment wraps the same ``DiffusionWorker`` the batch driver uses; this
module adds only HTTP (validation, auth, error mapping) and Serve plumbing (dynamic
batching, health checks, autoscaling, metrics).
"""


import asyncio
import base64
import logging
import os
import secrets
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from ray_diffusion.errors import (
    ConfigError,
    InvalidRequestError,
    RayDiffusionError,
    WorkerUnavailableError,
    http_status_for,
)
from ray_diffusion.generation import GenerationRequest, GenerationResult
from ray_diffusion.worker import DiffusionWorker
from serve_app.api import ErrorResponse, ImageData, ImagesRequest, ImagesResponse, to_generation_request
from serve_app.config import ServeAppConfig

logger = logging.getLogger(__name__)

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]
MODEL_DEPLOYMENT = "DiffusionModel"
INGRESS_DEPLOYMENT = "Ingress"


@serve.deployment(name=MODEL_DEPLOYMENT)
class DiffusionModel:
    """One replica = one DiffusionWorker on the GPU(s) Serve assigned."""

    def __init__(self, config: ServeAppConfig):
        from ray.util import metrics

        ctx = serve.get_replica_context()
        replica = getattr(getattr(ctx, "replica_id", None), "unique_id", None) or str(os.getpid())
        self.worker = DiffusionWorker(config.worker, worker_id=f"replica-{replica}")
        self.worker.load()
        self.generate_batched.set_max_batch_size(config.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._batch_sizes = metrics.Histogram(
            "ray_diffusion_serve_batch_size",
            description="Requests per dynamic batch in the model deployment.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        self.batches = 0

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate_batched(self, items: list[tuple[GenerationRequest, float]]) -> list[Any]:
        requests = [r for r, _ in items]
        latest = max(d for _, d in items)
        self.batches += 1
        self._batch_sizes.observe(len(items))
        try:
            # In a thread: the replica's event loop stays free for health checks and new requests.
            # The call stops at the next denoising step once every request in it is past its deadline.
            results = await asyncio.to_thread(
                self.worker.generate, requests, should_cancel=lambda: time.time() > latest
            )
        except Exception as exc:  # every request of the batch gets the error
            return [exc] * len(items)
        out, pos = [], 0
        for r in requests:
            out.append(results[pos : pos + r.num_images])
            pos += r.num_images
        return out

    async def generate(self, request: GenerationRequest, deadline: float) -> list[GenerationResult]:
        """One request through dynamic batching."""
        result = await self.generate_batched((request, deadline))
        if isinstance(result, BaseException):
            raise result
        return result

    async def generate_micro_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """A batch job's micro-batch, already grouped by the driver: straight to the worker."""
        return await asyncio.to_thread(self.worker.generate, requests)

    def check_health(self) -> None:
        # Never waits for a running generation: the worker's check reads counters only.
        self.worker.check_health()

    def describe(self) -> dict[str, Any]:
        return self.worker.describe()

    def stats(self) -> dict[str, Any]:
        return {**self.worker.stats(), "batches": self.batches}


fastapi_app = FastAPI(
    title="ray-diffusion",
    description="OpenAI-compatible image generation over Hugging Face diffusers on Ray Serve.",
    version="0.1.0",
)
# The ingress replica sets this from its config; the body-size middleware runs before
# the route (and before FastAPI parses anything).
_BODY_LIMIT = {"bytes": 65536}


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 408: "timeout", 413: "invalid_request_error", 503: "overloaded"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = ErrorResponse(error={"message": message, "type": kind, "param": param, "code": str(status)})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _param_of(message: str) -> str | None:
    head = message.split(":", 1)[0]
    return head if head.isidentifier() else None


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts, first = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        first = first or field
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{field}: {msg}")
    return error_response(422, "; ".join(parts), first)


class BodyLimitMiddleware:
    """Refuse bodies over ``_BODY_LIMIT`` with 413 before FastAPI parses anything.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    costs ~2 ms per request on a small CPU, more than everything else the ingress does.
    A declared Content-Length within the limit passes straight through (the HTTP server
    enforces it); a chunked body is read up to the limit and replayed.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = _BODY_LIMIT["bytes"]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await self._refuse(int(declared), limit, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await self._refuse(size, limit, scope, receive, send, at_least=more)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(size: int, limit: int, scope: dict, receive: Any, send: Any, at_least: bool = False) -> None:
        amount = f"more than {limit}" if at_least else str(size)
        response = error_response(413, f"body: {amount} bytes; the limit is {limit}", "body")
        await response(scope, receive, send)


fastapi_app.add_middleware(BodyLimitMiddleware)


def _load_api_key(cfg: ServeAppConfig) -> bytes | None:
    if cfg.api_key_file:
        with open(cfg.api_key_file, encoding="utf-8") as f:
            key = f.readline().strip()
    else:
        key = os.environ.get(cfg.api_key_env, "").strip()
    return key.encode() if key else None


PLAYGROUND = resources.files("serve_app").joinpath("playground.html").read_text(encoding="utf-8")


@serve.deployment(name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP front: auth, limits, OpenAI shapes, error mapping. No GPU work happens here."""

    def __init__(self, model: DeploymentHandle, config: ServeAppConfig):
        from ray.util import metrics

        self.model = model
        self.cfg = config
        _BODY_LIMIT["bytes"] = config.limits.max_body_bytes
        self._key = _load_api_key(config)
        self._native: tuple[int, int] | None = None
        self._requests = metrics.Counter(
            "ray_diffusion_http_requests", description="HTTP requests by route and status.",
            tag_keys=("route", "status"),
        )
        self._latency = metrics.Histogram(
            "ray_diffusion_http_latency_seconds", description="HTTP request latency.",
            boundaries=LATENCY_BOUNDARIES, tag_keys=("route",),
        )
        logger.info("ingress ready; auth %s", "on" if self._key else "off")  # never the key itself

    def _authorize(self, authorization: str | None) -> JSONResponse | None:
        if self._key is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self._key):
            return error_response(401, "missing or invalid API key: send 'Authorization: Bearer <key>'")
        return None

    def _record(self, route: str, status: int, t0: float) -> None:
        self._requests.inc(1, tags={"route": route, "status": str(status)})
        self._latency.observe(time.perf_counter() - t0, tags={"route": route})

    def _map_error(self, exc: BaseException) -> JSONResponse:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        if isinstance(exc, BackPressureError):
            return error_response(
                503, "server overloaded: too many queued requests; retry later",
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            )
        if isinstance(exc, RayActorError):
            exc = WorkerUnavailableError("the model replica serving this request died; retry")
        status = http_status_for(exc)
        if status == 500:
            logger.exception("unexpected error", exc_info=exc)
            return error_response(500, "internal error")
        message = str(exc.args[0]) if isinstance(exc, RayDiffusionError) and exc.args else str(exc)
        headers = {"Retry-After": str(self.cfg.retry_after_s)} if status == 503 else None
        return error_response(status, message.splitlines()[-1] if message else type(exc).__name__,
                              _param_of(message), headers)

    async def _native_size(self) -> tuple[int, int]:
        if self._native is None:
            info = await self.model.describe.remote()
            self._native = tuple(info["native_size"])  # type: ignore[assignment]
        return self._native

    @fastapi_app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once a model replica answers, 503 before; reveals nothing else."""
        try:
            await asyncio.wait_for(self.model.describe.remote(), timeout=2.0)
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @fastapi_app.get("/v1/models", responses={401: {"model": ErrorResponse}})
    async def models(self, authorization: str | None = Header(default=None)) -> Any:
        if (denied := self._authorize(authorization)) is not None:
            return denied
        name = self.cfg.served_model_name
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "ray-diffusion"}]}

    @fastapi_app.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        responses={s: {"model": ErrorResponse} for s in (400, 401, 408, 413, 422, 503)},
    )
    async def generate(self, body: ImagesRequest, authorization: str | None = Header(default=None)) -> Any:
        t0 = time.perf_counter()
        response = None
        try:
            if (denied := self._authorize(authorization)) is not None:
                self._record("generations", 401, t0)
                return denied
            request = to_generation_request(
                body, self.cfg.limits, self.cfg.served_model_name, await self._native_size()
            )
            deadline = time.time() + self.cfg.request_timeout_s
            response = self.model.generate.remote(request, deadline)
            # A little grace: the model stops itself at the deadline and answers 408.
            results: list[GenerationResult] = await asyncio.wait_for(
                response, timeout=self.cfg.request_timeout_s + 10
            )
        except asyncio.TimeoutError:
            if response is not None:
                response.cancel()
            self._record("generations", 408, t0)
            return error_response(408, f"request timed out after {self.cfg.request_timeout_s:g}s")
        except (InvalidRequestError, ConfigError) as exc:
            self._record("generations", http_status_for(exc), t0)
            return error_response(http_status_for(exc), str(exc), _param_of(str(exc)))
        except Exception as exc:
            mapped = self._map_error(exc)
            self._record("generations", mapped.status_code, t0)
            return mapped
        self._record("generations", 200, t0)
        data = [
            ImageData(b64_json=base64.b64encode(r.png).decode(), revised_prompt=r.prompt, seed=r.seed) for r in results
        ]
        body = ImagesResponse(
            created=int(time.time()), data=data, seeds=[r.seed for r in results], model=self.cfg.served_model_name
        )
        # Serialized once here; returning the model would have FastAPI validate it again.
        return Response(body.model_dump_json(), media_type="application/json")

    @fastapi_app.get("/", response_class=HTMLResponse)
    async def playground(self) -> HTMLResponse:
        return HTMLResponse(PLAYGROUND)


def build_app(args: dict[str, Any] | ServeAppConfig) -> Any:
    """Application builder: ``serve run serve_app.app:build_app model=... max_batch_size=4``."""
    cfg = args if isinstance(args, ServeAppConfig) else ServeAppConfig.from_args(args)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": cfg.gpus_per_replica, "num_cpus": cfg.cpus_per_replica},
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
    }
    if cfg.autoscaling:
        lo = cfg.min_replicas if cfg.min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": lo,
            "initial_replicas": max(lo, 1),
            "max_replicas": cfg.max_replicas if cfg.max_replicas is not None else max(lo, 1),
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = cfg.num_replicas
    model = DiffusionModel.options(**options).bind(cfg)
    return Ingress.bind(model, cfg)
