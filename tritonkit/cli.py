"""`tritonkit` command line: one subcommand per step of the data flow, plus `demo` that chains them.

Heavy imports (torch, onnx, tritonclient, matplotlib) happen inside the subcommands, so `--help`
is instant. A UserError becomes one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import defaults
from .errors import UserError


def _console(stderr: bool = False):
    from rich.console import Console
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # logs and pipes: wide enough that reasons stay on one line
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


# --- shared pieces ---------------------------------------------------------------------------------

def _planning_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to plan for")
    g.add_argument("--spec", type=Path, default=defaults.DEFAULT_SPEC, help="model spec YAML (default: %(default)s)")
    g.add_argument("--gpu", default="auto",
                   help="auto (detect), none, a catalogue name (T4, A100, H100, ...), or sm=40,cc=7.5,mem=16GiB")
    g.add_argument("--server", choices=("embedded", "ngc"), default="embedded",
                   help="serving Triton: the embedded PyPI tritonserver (python backend only) or the NGC image")
    g.add_argument("--ngc-release", default=None, metavar="YY.MM",
                   help=f"NGC tritonserver release to render for (default: the pinned {defaults.NGC_RELEASE})")
    g.add_argument("--allow-insecure-release", action="store_true",
                   help=f"accept an NGC release older than {defaults.NGC_SECURE_FLOOR} (before the 2025 security fixes)")
    g.add_argument("--no-tensorrt", action="store_true",
                   help="NGC target where no TensorRT plan can be built: ONNX Runtime with its TensorRT accelerator")


def _capabilities(args, hardware, server):
    from .policy import Capabilities
    # Plans are built only for a TensorRT we know the server has (the pinned release's).
    caps = Capabilities(tensorrt_build=not getattr(args, "no_tensorrt", False) and server.tensorrt_version is not None)
    if args.server == "embedded" and hardware.gpus:  # only the PyTorch path needs torch's own threshold
        from dataclasses import replace

        from .torch_facts import inductor_min_sms
        sms, source = inductor_min_sms()
        caps = replace(caps, inductor_min_sms=sms, inductor_source=source)
    return caps


def _make_plans(args):
    """One plan, or one per GPU type when --gpu names a fleet (T4,L4,H100)."""
    from .hardware import resolve
    from .policy import plan_fleet
    from .servers import server_target
    from .spec import load_spec
    hardware = resolve(args.gpu)
    server = server_target(args.server, getattr(args, "ngc_release", None), getattr(args, "allow_insecure_release", False))
    return plan_fleet(load_spec(args.spec), hardware, server, _capabilities(args, hardware, server))


def _make_plan(args):
    plans = _make_plans(args)
    if len(plans) > 1:
        raise UserError("this step targets one GPU type", where="--gpu", actual=args.gpu,
                        expected="a single GPU type", fix="render fleets with `tritonkit render --gpu A,B`; build and "
                        "serve on each host with its own GPU")
    return plans[0]


def print_decisions(plans, console) -> None:
    from rich.table import Table

    from .render import variant_name
    for plan in plans if isinstance(plans, tuple) else (plans,):
        target = plan.gpu.describe() if plan.gpu else "CPU"
        table = Table(title=f"plan for {target} on the {plan.server.name} server "
                            f"(variant '{variant_name(plan)}')", show_lines=False)
        for col in ("model", "decision", "value", "reason"):
            table.add_column(col, overflow="fold")
        for d in plan.decisions:
            table.add_row(d.subject, d.key, d.value, d.reason)
        console.print(table)


# --- subcommands -----------------------------------------------------------------------------------

def cmd_detect(args) -> int:
    from dataclasses import asdict
    from .hardware import detect
    hw = detect()
    if args.json:
        print(json.dumps(asdict(hw), indent=2))
        return 0
    print(hw.describe())
    for g in hw.gpus:
        print(f"  GPU{g.index}: {g.name}: {g.sm_count} SMs, compute capability "
              f"{g.compute_capability[0]}.{g.compute_capability[1]}, {g.memory_gib:.1f} GiB, "
              f"precisions {', '.join(g.precisions)}")
    return 0


def cmd_plan(args) -> int:
    plans = _make_plans(args)
    if args.json:
        from .render import plan_record
        records = [plan_record(p) for p in plans]
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2, sort_keys=True))
    else:
        print_decisions(plans, _console())
    return 0


def cmd_render(args) -> int:
    from .render import check_repository, render_files, validate_files, write_repository
    plan = _make_plans(args)
    console = _console()
    if args.explain:
        print_decisions(plan, console)
    files = render_files(plan)
    validate_files(plan, files)
    if args.check:
        drift = check_repository(plan, args.out, files)
        if drift.clean:
            console.print(f"{args.out}: up to date ({len(files)} files)")
            return 0
        for label, items in (("missing", drift.missing), ("changed", drift.changed), ("not rendered", drift.extra)):
            for rel in items:
                console.print(f"{label}: {rel}")
        if drift.diff:
            sys.stdout.write(drift.diff)
        console.print(f"{args.out} differs from what would be rendered; run `tritonkit render` to update it")
        return 1
    write_repository(plan, args.out, files)
    variants = "" if len(plan) == 1 else (f", {len(plan)} GPU variants (start each server with "
                                          f"--model-config-name=<variant>)")
    console.print(f"rendered {len(plan[0].models)} models ({len(files)} files{variants}) into {args.out}; every "
                  "config parsed with Triton's model_config schema")
    return 0


def cmd_build(args) -> int:
    from .build import build
    plans = _make_plans(args)  # a fleet builds the artifacts of this host's GPU type, reports the others
    results = build(plans if len(plans) > 1 else plans[0], args.repo, force=args.force)
    for r in results:
        print(r.summary())
    return 0


def _server_options(args):
    from .serve import ServerOptions
    return ServerOptions(repository=args.repo, address=args.address, http_port=args.http_port,
                         grpc_port=args.grpc_port, metrics_port=args.metrics_port, fail_fast=not args.degraded,
                         log_file=args.log_file, stub_python=args.stub_python)


def cmd_serve(args) -> int:
    if args.docker:
        from .containers import serve_in_docker
        return serve_in_docker(_server_options(args), image=args.image)
    if args.image:
        raise UserError("--image needs --docker", where="--image", fix="add --docker, or drop --image")
    from .serve import serve
    return serve(_server_options(args))


def _bench_and_report(model, url: str, args) -> int:
    from .bench import print_report, run_bench, write_report
    from .workload import bench_target
    target = bench_target(model, url, args.protocol, batch=args.batch)
    budget = args.budget_ms if args.budget_ms is not None else model.p99_budget_ms
    report = run_bench(target, concurrency=args.concurrency, requests_per_level=args.requests,
                       budget_p99_ms=budget, progress=not args.no_progress)
    print_report(report)
    paths = write_report(report, args.reports, stem=f"bench-{model.name}-{args.protocol}")
    print("report: " + "  ".join(str(p) for p in paths.values()))
    return 0 if report.verdict else 1


def cmd_bench(args) -> int:
    from .spec import load_spec
    spec = load_spec(args.spec)
    model = spec.model(args.model) if args.model else spec.models[0]
    port = args.grpc_port if args.protocol == "grpc" else args.http_port
    return _bench_and_report(model, args.url or f"{defaults.BIND_ADDRESS}:{port}", args)


def cmd_demo(args) -> int:
    """detect -> plan -> render -> build -> serve (embedded) -> bench -> stop."""
    from .build import build
    from .render import write_repository
    from .serve import EmbeddedServer
    console = _console()
    args.server = "embedded"
    plan = _make_plan(args)
    print_decisions(plan, console)
    write_repository(plan, args.repo)
    console.print(f"[1/4] rendered {args.repo}")
    for r in build(plan, args.repo):
        console.print(f"[2/4] {r.summary()}")
    from .spec import load_spec
    spec = load_spec(args.spec)
    with EmbeddedServer(_server_options(args)) as server:
        console.print(f"[3/4] embedded Triton {server.triton.version} ready on {server.grpc_url} (gRPC) and "
                      f"{server.http_url} (HTTP); development/CI server, loopback only")
        code = 0
        for model in spec.models:
            console.print(f"[4/4] measuring {model.name} over gRPC")
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            code |= _bench_and_report(model, url, args)
    console.print("server stopped")
    return code


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--repo", "--repository", dest="repo", type=Path, default=defaults.DEFAULT_REPOSITORY,
                   help="model repository (default: %(default)s)")
    g.add_argument("--address", default=defaults.BIND_ADDRESS, help="bind address (default: %(default)s, loopback only)")
    g.add_argument("--http-port", type=int, default=defaults.HTTP_PORT)
    g.add_argument("--grpc-port", type=int, default=defaults.GRPC_PORT)
    g.add_argument("--metrics-port", type=int, default=defaults.METRICS_PORT)
    g.add_argument("--degraded", action="store_true",
                   help="keep serving the models that loaded when one fails (default: fail fast, exit non-zero)")
    g.add_argument("--log-file", type=Path, default=None, help="tritonserver log (default: a temp file)")
    g.add_argument("--stub-python", type=Path, default=None,
                   help="Python (interpreter or bin folder) whose environment runs the python-backend models; it "
                        "needs numpy<2 (default: $TRITONKIT_STUB_PYTHON, else the Python running tritonkit)")


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def _bench_args(p: argparse.ArgumentParser, with_url: bool) -> None:
    g = p.add_argument_group("measurement")
    if with_url:
        g.add_argument("--spec", type=Path, default=defaults.DEFAULT_SPEC, help="model spec YAML (default: %(default)s)")
        g.add_argument("--model", default=None, help="spec model to measure (default: the first)")
        g.add_argument("--url", default=None, help="host:port of the server (default: 127.0.0.1 and the port flag)")
        g.add_argument("--http-port", type=int, default=defaults.HTTP_PORT)
        g.add_argument("--grpc-port", type=int, default=defaults.GRPC_PORT)
    g.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    g.add_argument("--concurrency", type=_concurrency, default=defaults.BENCH_CONCURRENCY,
                   help="comma-separated levels (default: %(default)s)")
    g.add_argument("--requests", type=int, default=defaults.BENCH_REQUESTS_PER_LEVEL, help="requests per level")
    g.add_argument("--batch", type=int, default=1, help="items per request (default: 1)")
    g.add_argument("--budget-ms", type=float, default=None, help="p99 budget (default: the spec's latency_budget)")
    g.add_argument("--reports", type=Path, default=defaults.DEFAULT_REPORTS, help="report folder (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (one line per level instead)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="report this host's GPUs (SMs, compute capability, memory) and CPU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_detect)

    p = sub.add_parser("plan", help="decide backend, precision, instances and batching, with reasons")
    _planning_args(p)
    p.add_argument("--json", action="store_true", help="the whole plan as JSON")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("render", help="spec + hardware -> model repository (validated, written atomically)")
    _planning_args(p)
    p.add_argument("--out", type=Path, default=defaults.DEFAULT_REPOSITORY, help="repository (default: %(default)s)")
    p.add_argument("--explain", action="store_true", help="print every decision with its reason")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the repository on disk differs")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("build", help="produce and validate the artifacts the plan names (ONNX, TensorRT plans, "
                                     "PyTorch weights, tokenizer), with build.json and reproduce.sh")
    _planning_args(p)
    p.add_argument("--repo", type=Path, default=defaults.DEFAULT_REPOSITORY, help="repository (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest says it is current")
    p.set_defaults(run=cmd_build)

    p = sub.add_parser("serve", help="run the embedded tritonserver on a repository until Ctrl-C / SIGTERM")
    _server_args(p)
    g = p.add_argument_group("container (needs a Docker engine and tritonkit[compose])")
    g.add_argument("--docker", action="store_true",
                   help="serve in one container instead: repository mounted read-only, non-root, healthchecked")
    g.add_argument("--image", default=None,
                   help="with --docker: tritonkit/triton-cpu:local (default) or tritonkit/triton:<NGC release> "
                        "(GPU); built from deploy/docker/")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("bench", help="latency/throughput sweep against a running server; fails over the p99 budget")
    _bench_args(p, with_url=True)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("demo", help="detect, render, build, serve (embedded), measure, stop")
    _planning_args(p)
    _server_args(p)
    _bench_args(p, with_url=False)
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
