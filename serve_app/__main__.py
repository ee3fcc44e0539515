"""``python -m serve_app --model DIR``: run the Serve app on loopback until Ctrl-C.

Starts an embedded local Ray unless ``--address``/RAY_ADDRESS points at a cluster.
Any ServeAppConfig/WorkerConfig key can be set with ``--set key=value``.
"""

from __future__ import annotations

import argparse
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="hub id or local pipeline directory")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded)")
    p.add_argument("--name", default="diffusion", help="Serve application name (default diffusion)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any app or worker key")
    args = p.parse_args(argv)

    from ray_diffusion.errors import ConfigError
    from serve_app.config import ServeAppConfig

    values: dict[str, str] = {"model": args.model}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        values[key.replace("-", "_")] = value
    try:
        cfg = ServeAppConfig.from_args(values)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from batch.driver import connect_ray
    from serve_app.app import build_app

    connect_ray(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(build_app(cfg), name=args.name, route_prefix="/")  # returns once the app is RUNNING
        print(f"serving {cfg.served_model_name} at http://{args.host}:{args.port}/ (playground) — Ctrl-C to stop",
              flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
