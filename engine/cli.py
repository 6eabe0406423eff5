"""The `proctor` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from proctor.engine.config import Config, ConfigError, load_config
from proctor.engine.models import builtin_available
from proctor.engine.version import __version__

log = logging.getLogger("proctor")


def default_services() -> dict[str, Any]:
    """The built-in models of this machine: SmolLM2 as teacher and RRM when its package is installed, else tiny."""
    model = "builtin:smollm2" if builtin_available("smollm2") else "builtin:tiny"
    return {"teacher": {"model": model}, "reward": {"model": model}}


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, default_services())
    server = config.server
    for flag, attr in (("host", "host"), ("port", "port"), ("metrics_port", "metrics_port")):
        value = getattr(args, flag)
        if value is not None:
            setattr(server, attr, value)
    if config.teacher is not None:
        if args.teacher_model:
            config.teacher.model = args.teacher_model
        if args.device:
            config.teacher.device = args.device
    return config


async def serve(config: Config) -> int:
    from proctor.engine.server import ProctorServer

    server = ProctorServer(config)
    await server.start()
    host = config.server.host
    metrics = f"http://{config.server.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    print(
        f"proctor {__version__}: listening on {host}:{server.port} "
        f"(services: {', '.join(config.services()) or 'none'}; metrics: {metrics})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.create_task(server.wait_until_ready())
    ready.add_done_callback(lambda _: print("proctor: ready", flush=True))
    await stop.wait()
    print(f"proctor: draining (grace {config.server.drain_grace_s:g}s)", flush=True)
    await server.drain()
    print("proctor: stopped", flush=True)
    return 0


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see README); flags below override it")
    p.add_argument("--host", help="bind address [127.0.0.1]")
    p.add_argument("--port", type=int, help="gRPC port [50051]; 0 = any free port")
    p.add_argument("--metrics-port", type=int, help="Prometheus port [9400]; 0 = any free port, -1 = off")
    p.add_argument("--teacher-model", help="HF id, local folder, builtin:smollm2 or builtin:tiny")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proctor", description="Serve Teacher, Critic and Reward models to distillation and RL trainers."
    )
    parser.add_argument("--version", action="version", version=f"proctor {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the gRPC server. Without --config: the built-in models on this machine, all services "
        "whose models exist, on 127.0.0.1:50051 with metrics on :9400.",
    )
    _add_server_flags(p_serve)
    p_demo = sub.add_parser(
        "demo",
        help="start a server and run a short client session against it",
        description="Start a server on free ports with the built-in models, run a few generations (n > 1, "
        "log-probs) and a Score call through the real gRPC client, print the results and the metrics URL.",
    )
    p_demo.add_argument("--teacher-model", help="teacher model [builtin:smollm2, else builtin:tiny]")
    p_demo.add_argument("--device", default="auto", help="[auto]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return asyncio.run(serve(_config(args)))
        if args.command == "demo":
            from proctor.engine.demo import run_demo

            return asyncio.run(run_demo(args.teacher_model or default_services()["teacher"]["model"], args.device))
    except ConfigError as exc:
        print(f"proctor: config error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
