"""The Serve app over real HTTP on loopback: tiny pipeline for correctness, fake backend for timing."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from batch.config import BatchJobConfig
from batch.driver import run_job
from tests.support import assert_images_close, wait_for_condition

STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir):
    """Local Ray (4 logical GPUs) with Serve on loopback and the tiny-model app at /."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app({"model": str(tiny_model_dir), "num_replicas": 1, "max_batch_size": 4,
                   "batch_wait_timeout_s": 0.5, "num_threads": 1}),
        name="tiny", route_prefix="/",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def model_stats(app: str = "tiny") -> dict:
    from ray import serve

    return serve.get_deployment_handle("DiffusionModel", app_name=app).stats.remote().result()


def post(url: str, body: dict, path: str = "/v1/images/generations", **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kw)


def png_of(item: dict) -> bytes:
    return base64.b64decode(item["b64_json"])


def concurrently(fn, args_list):
    results = [None] * len(args_list)

    def run(i, args):
        results[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_openai_client_round_trip_n1_and_n3(serve_url):
    import openai

    client = openai.OpenAI(base_url=serve_url + "/v1", api_key="not-needed", max_retries=0)
    one = client.images.generate(prompt="a fox", n=1, size="64x64", response_format="b64_json",
                                 extra_body={"seed": 5, "num_inference_steps": STEPS})
    assert Image.open(io.BytesIO(base64.b64decode(one.data[0].b64_json))).size == (64, 64)
    assert one.model_extra["seeds"] == [5]

    three = client.images.generate(prompt="a boat", n=3, size="48x32", response_format="b64_json",
                                   extra_body={"seed": 40, "num_inference_steps": STEPS})
    assert len(three.data) == 3 and three.model_extra["seeds"] == [40, 41, 42]
    for item, seed in zip(three.data, three.model_extra["seeds"]):
        png = base64.b64decode(item.b64_json)
        assert Image.open(io.BytesIO(png)).size == (48, 32)
        alone = post(serve_url, {"prompt": "a boat", "size": "48x32", "seed": seed, "num_inference_steps": STEPS})
        assert_images_close(png_of(alone.json()["data"][0]), png)

    models = client.models.list()
    assert [m.id for m in models.data] == [models.data[0].id] and models.data[0].id.endswith("model")


def test_healthz_and_playground_page(serve_url):
    r = httpx.get(serve_url + "/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    page = httpx.get(serve_url + "/")
    assert page.status_code == 200 and "<form" in page.text and "/v1/images/generations" in page.text


def test_api_gives_the_same_png_bytes_as_the_batch_driver_at_batch_size_1(serve_url, tmp_path):
    api = post(serve_url, {"prompt": "a lighthouse", "size": "64x64", "seed": 77, "num_inference_steps": STEPS,
                           "guidance_scale": 7.5})
    assert api.status_code == 200
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a lighthouse", "seed": 77}) + "\n")
    out = tmp_path / "out"
    cfg = BatchJobConfig.from_flat({"model": model_path(serve_url), "prompts": str(prompts), "output": str(out),
                                    "steps": STEPS, "batch_size": 1, "num_workers": 1, "num_threads": 1,
                                    "progress": False})
    assert run_job(cfg, echo=lambda *_: None).exit_code == 0
    assert (out / "images" / "00000.png").read_bytes() == png_of(api.json()["data"][0])


def model_path(serve_url: str) -> str:
    return httpx.get(serve_url + "/v1/models").json()["data"][0]["id"]


def test_dynamic_batching_batches_compatible_requests(serve_url):
    before = model_stats()
    bodies = [{"prompt": f"fox {i}", "size": "64x64", "seed": 100 + i, "num_inference_steps": STEPS} for i in range(8)]
    responses = concurrently(post, [(serve_url, b) for b in bodies])
    assert [r.status_code for r in responses] == [200] * 8
    after = model_stats()
    calls, batches = after["pipeline_calls"] - before["pipeline_calls"], after["batches"] - before["batches"]
    assert batches < 8 and calls < 8, (calls, batches)
    for body, r in zip(bodies, responses):
        alone = post(serve_url, body)  # sequential: a batch of one
        assert_images_close(png_of(alone.json()["data"][0]), png_of(r.json()["data"][0]))


def test_incompatible_requests_are_never_mixed(serve_url):
    sizes = ["64x64", "32x48", "64x64", "32x48", "16x16"]
    bodies = [{"prompt": "x", "size": s, "seed": i, "num_inference_steps": STEPS} for i, s in enumerate(sizes)]
    responses = concurrently(post, [(serve_url, b) for b in bodies])
    for size, r in zip(sizes, responses):
        assert r.status_code == 200
        w, h = map(int, size.split("x"))
        assert Image.open(io.BytesIO(png_of(r.json()["data"][0]))).size == (w, h)


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "x", "n": 9}, 422, "n"),
        ({"prompt": "x", "size": "65x64"}, 422, "size"),
        ({"prompt": "x", "num_inference_steps": 1000}, 422, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": 99}, 422, "guidance_scale"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "x", "colour": "red"}, 422, "colour"),
        ({"n": 1}, 422, "prompt"),
        ({"prompt": "x", "response_format": "url"}, 400, "response_format"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field_without_gpu_work(serve_url, body, status, param):
    before = model_stats()["pipeline_calls"]
    r = post(serve_url, body)
    assert r.status_code == status
    assert r.json()["error"]["param"] == param
    assert model_stats()["pipeline_calls"] == before


def test_oversized_body_is_refused(serve_url):
    r = httpx.post(serve_url + "/v1/images/generations", content=b'{"prompt": "' + b"x" * 70000 + b'"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"


def test_chunked_bodies_are_limited_too_and_pass_through_when_small(serve_url):
    url = serve_url + "/v1/images/generations"
    big = iter([b'{"prompt": "', b"x" * 70000, b'"}'])  # no Content-Length: chunked
    r = httpx.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    small = iter([b'{"prompt": "a chunked ', b'request", "size": "32x32", "num_inference_steps": 2}'])
    r = httpx.post(url, content=small, headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["revised_prompt"] == "a chunked request"


def test_batch_job_through_serve_matches_the_standalone_job(serve_url, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"serve prompt {i}" for i in range(6)) + "\n")
    common = {"model": model_path(serve_url), "prompts": str(prompts), "steps": STEPS, "batch_size": 2,
              "num_threads": 1, "progress": False, "seed": 3}
    via_serve = BatchJobConfig.from_flat({**common, "output": str(tmp_path / "serve"), "serve_app": "tiny"})
    report = run_job(via_serve, echo=lambda *_: None)
    assert report.exit_code == 0 and report.summary["serve_app"] == "tiny"
    assert all(w.startswith("replica-") for w in report.summary["workers"])
    standalone = BatchJobConfig.from_flat({**common, "output": str(tmp_path / "own"), "num_workers": 1})
    assert run_job(standalone, echo=lambda *_: None).exit_code == 0

    def files(d):
        return {p.name: p.read_bytes() for p in (tmp_path / d / "images").iterdir()}

    assert files("serve") == files("own") and len(files("own")) == 6
    rows = lambda d: sorted(  # noqa: E731
        (r["index"], r["seed"], r["sha256"]) for r in map(json.loads, (tmp_path / d / "manifest.jsonl").open()))
    assert rows("serve") == rows("own")


# -- fake backend apps: timing-sensitive paths --------------------------------------------------
def deploy_fake(name: str, blocking: bool = True, **args):
    from ray import serve

    from serve_app.app import build_app

    app = build_app({"gpus_per_replica": 0, **args})
    if blocking:
        serve.run(app, name=name, route_prefix=f"/{name}")
    else:
        serve._run(app, name=name, route_prefix=f"/{name}", _blocking=False)


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name)


def test_api_key_required_when_configured(serve_url, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    deploy_fake("secured", model="fake://?latency_s=0", api_key_file=str(key_file))
    try:
        url = serve_url + "/secured"
        body = {"prompt": "x", "num_inference_steps": 2}
        assert post(url, body).status_code == 401
        assert post(url, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
        ok = post(url, body, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 1
        health = httpx.get(url + "/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert "s3cret" not in health.text
    finally:
        delete_app("secured")


def test_healthz_is_503_until_the_model_replica_is_ready(serve_url):
    deploy_fake("slowload", blocking=False, model="fake://?latency_s=0&load_s=15")
    try:
        url = serve_url + "/slowload"

        def status():
            try:
                return httpx.get(url + "/healthz", timeout=10).status_code
            except httpx.HTTPError:
                return None

        wait_for_condition(lambda: status() == 503, timeout=60, message="ingress up, model loading")
        wait_for_condition(lambda: status() == 200, timeout=90, message="model replica ready")
    finally:
        delete_app("slowload")


def test_timeout_gives_408_and_stops_the_generation(serve_url):
    deploy_fake("timeout", model="fake://?latency_s=60", request_timeout_s=1.0)
    try:
        r = post(serve_url + "/timeout", {"prompt": "x", "num_inference_steps": 50})
        assert r.status_code == 408
        # the pipeline call was interrupted at a step, not run for the full 60 s
        stats = wait_for_condition(lambda: model_stats("timeout")["pipeline_calls"] >= 1 and model_stats("timeout"),
                                   timeout=30, message="cancelled call finished")
        assert stats["busy_s"] < 30
    finally:
        delete_app("timeout")


def test_overload_gets_503_with_retry_after_without_touching_the_pipeline(serve_url):
    deploy_fake("busy", model="fake://?latency_s=2", max_batch_size=1, max_ongoing_requests=1,
                max_queued_requests=1)
    try:
        responses = concurrently(post, [(serve_url + "/busy", {"prompt": f"x{i}", "num_inference_steps": 2})
                                        for i in range(6)])
        codes = [r.status_code for r in responses]
        assert codes.count(503) >= 1 and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
        assert all(r.headers.get("retry-after") == "2" for r in responses if r.status_code == 503)
        assert model_stats("busy")["pipeline_calls"] == codes.count(200)
    finally:
        delete_app("busy")


def strategy_for(schema: dict, components: dict):
    """A hypothesis strategy for a JSON-schema fragment of FastAPI's OpenAPI output.

    Covers what ImagesRequest uses (types, anyOf, enum, const, $ref) and, on purpose,
    also produces values of the wrong type so validation paths get fuzzed too.
    """
    from hypothesis import strategies as st

    if "$ref" in schema:
        return strategy_for(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if "anyOf" in schema:
        return st.one_of([strategy_for(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=10)
    if "const" in schema:
        return st.just(schema["const"])
    wrong = st.none() | st.booleans() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=40) | st.from_regex(r"\A[0-9]{1,4}x[0-9]{1,4}\Z") | wrong
    if kind == "integer":
        return st.integers(-5, 80) | st.integers() | wrong
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 30) | wrong
    if kind == "null":
        return st.none()
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: strategy_for(v, components) for k, v in props.items() if k in required},
            optional={k: strategy_for(v, components) for k, v in props.items() if k not in required},
        )
    return wrong


def test_openapi_fuzz_never_gives_5xx(serve_url):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    deploy_fake("fuzz", model="fake://?latency_s=0", max_side=64, max_n=2, max_steps=4)
    try:
        url = serve_url + "/fuzz"
        spec = httpx.get(url + "/openapi.json").json()
        components = spec["components"]["schemas"]
        body_schema = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]
        bodies = strategy_for(body_schema["schema"], components)
        statuses = []

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=st.one_of(bodies, st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8))))
        def check(body):
            r = httpx.post(url + "/v1/images/generations", json=body, timeout=60)
            statuses.append(r.status_code)
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]["message"]

        check()
        assert any(400 <= s < 500 for s in statuses)
        assert {s for s in statuses} <= {200, 400, 422}
    finally:
        delete_app("fuzz")


def test_playground_generates_an_image_in_headless_chromium(serve_url):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(serve_url + "/")
        browser.find_element(By.ID, "steps").clear()
        browser.find_element(By.ID, "steps").send_keys("2")
        browser.find_element(By.ID, "seed").send_keys("123")
        browser.find_element(By.ID, "generate").click()
        wait_for_condition(lambda: browser.find_elements(By.CSS_SELECTOR, "#grid img"), timeout=60,
                           message="image shown")
        caption = browser.find_element(By.CSS_SELECTOR, "#grid figcaption").text
        assert caption == "seed 123"
        src = browser.find_element(By.CSS_SELECTOR, "#grid img").get_attribute("src")
        assert src.startswith("data:image/png;base64,")
        size = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size
        assert size == (64, 64)
        Path(__import__("tempfile").gettempdir(), "playground.png").write_bytes(browser.get_screenshot_as_png())
    finally:
        browser.quit()
