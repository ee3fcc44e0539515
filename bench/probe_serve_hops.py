"""The floor of a Serve HTTP request on this machine, hop by hop (p50 of 200 sequential GETs).

An empty plain deployment (proxy -> one replica), the same behind FastAPI, with a Starlette
``@app.middleware("http")``, and with one more DeploymentHandle hop to a second replica.
``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` in the environment tries Serve's proxy-less mode.

    python -m bench.probe_serve_hops
"""

import os
import socket
import statistics
import time

import httpx, ray
from ray import serve
from fastapi import FastAPI, Request
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
    port = 8000
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})

@serve.deployment(ray_actor_options={"num_cpus": 0})
class PlainApp:
    async def __call__(self, request):
        return {"ok": 1}

app_b = FastAPI()
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app_b)
class FastB:
    @app_b.get("/")
    async def root(self):
        return {"ok": 1}

app_c = FastAPI()
@app_c.middleware("http")
async def mw(request: Request, call_next):
    return await call_next(request)
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app_c)
class FastC:
    @app_c.get("/")
    async def root(self):
        return {"ok": 1}

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    async def echo(self, x):
        return x
app_d = FastAPI()
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app_d)
class FastD:
    def __init__(self, h):
        self.h = h
    @app_d.get("/")
    async def root(self):
        return {"ok": await self.h.echo.remote(1)}

c = httpx.Client()
for name, app in (("plain __call__", PlainApp.bind()), ("fastapi", FastB.bind()), ("fastapi+http middleware", FastC.bind()),
                  ("fastapi + handle hop", FastD.bind(Echo.bind()))):
    serve.run(app, name="x", route_prefix="/")
    url = f"http://127.0.0.1:{port}/"
    for _ in range(20): c.get(url)
    xs = []
    for _ in range(200):
        t = time.perf_counter(); r = c.get(url); xs.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    print(f"{name:28s} p50 {1000*statistics.median(xs):.2f} ms", flush=True)
    serve.delete("x")
serve.shutdown(); ray.shutdown()
