from pathlib import Path

import pytest
import yaml

from ray_diffusion.errors import ConfigError, InvalidRequestError
from serve_app.api import ImagesRequest, parse_size, to_generation_request
from serve_app.config import ServeAppConfig, ServeLimits

REPO = Path(__file__).resolve().parents[2]
LIMITS = ServeLimits()


def convert(**body):
    return to_generation_request(ImagesRequest(**body), LIMITS, "m", (64, 64))


def test_shipped_config_yaml_validates_and_builds():
    from serve_app.app import build_app

    doc = yaml.safe_load((REPO / "serve_app" / "config.yaml").read_text())
    assert doc["http_options"]["host"] == "127.0.0.1"
    (app,) = doc["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    cfg = ServeAppConfig.from_args(app["args"])
    assert cfg.autoscaling and (cfg.min_replicas, cfg.max_replicas) == (1, 4)
    assert (cfg.worker.dtype, cfg.worker.max_batch_size, cfg.limits.max_n) == ("float16", 4, 4)
    assert build_app(app["args"]) is not None


def test_serve_run_style_string_args_are_coerced():
    cfg = ServeAppConfig.from_args({"model": "/m", "max_batch_size": "8", "max_ongoing_requests": "16",
                                    "gpus_per_replica": "0", "max_side": "512"})
    assert (cfg.max_batch_size, cfg.worker.max_batch_size, cfg.worker.num_gpus, cfg.limits.max_side) == (8, 8, 0, 512)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"max_batch_size": 8, "max_ongoing_requests": 4}, "max_ongoing_requests"),
        ({"max_steps": 500}, "max_steps"),
        ({"min_replicas": 3, "max_replicas": 1}, "min_replicas"),
        ({"replicas": 2}, "replicas: unknown field"),
    ],
)
def test_bad_serve_args_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        ServeAppConfig.from_args(args)


def test_openai_body_becomes_a_worker_request():
    req = convert(prompt="a fox", n=3, size="48x32", seed=9, num_inference_steps=4, guidance_scale=2.0,
                  negative_prompt="blur", model="m", user="u1", response_format="b64_json")
    assert (req.width, req.height, req.num_images, req.seed, req.num_inference_steps, req.guidance_scale) == (
        48, 32, 3, 9, 4, 2.0)
    default = convert(prompt="x")
    assert (default.width, default.num_inference_steps, default.guidance_scale) == (None, 30, 7.5)


@pytest.mark.parametrize(
    "body, error, message",
    [
        ({"n": 5}, InvalidRequestError, "n: must be 1..4"),
        ({"size": "big"}, InvalidRequestError, "size: must be"),
        ({"size": "60x64"}, InvalidRequestError, "size: width and height must be multiples of 8"),
        ({"size": "2048x2048"}, InvalidRequestError, "size:"),
        ({"num_inference_steps": 101}, InvalidRequestError, "num_inference_steps: must be 1..100"),
        ({"guidance_scale": 25}, InvalidRequestError, "guidance_scale"),
        ({"prompt": "x" * 2001}, InvalidRequestError, "prompt: 2001 characters"),
        ({"model": "other"}, InvalidRequestError, "model: this server serves"),
        ({"seed": -1}, InvalidRequestError, "seed"),
        ({"n": 4, "size": "1024x1024", "num_inference_steps": 100}, InvalidRequestError, "exceeds the budget"),
        ({"response_format": "url"}, ConfigError, "response_format: 'url' is not supported"),
    ],
)
def test_limits_are_enforced_with_the_field_named(body, error, message):
    with pytest.raises(error, match=message):
        convert(**{"prompt": "x", **body})


def test_parse_size():
    assert parse_size("512x768") == (512, 768)
    assert parse_size(None) == (None, None)
