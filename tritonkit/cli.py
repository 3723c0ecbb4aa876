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

# Planning flags default to None so that a step given a finished plan (--plan, --check) can tell that one
# was passed and refuse it: a plan is decided once, flags never re-decide it later.
PLANNING_DEFAULTS = {"spec": defaults.DEFAULT_SPEC, "gpu": "auto", "cpus": None, "cpu_features": None, "server": "embedded",
                     "ngc_release": None, "allow_insecure_release": False, "no_tensorrt": False}


def _planning_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to plan for (planning only: later steps read the plan from the repository)")
    g.add_argument("--spec", type=Path, default=None, help=f"model spec YAML (default: {defaults.DEFAULT_SPEC})")
    g.add_argument("--gpu", default=None,
                   help="auto (detect; the default), none, a catalogue name (T4, A100, H100, ...), a fleet "
                        "(T4,L4,H100), or sm=40,cc=7.5,mem=16GiB")
    g.add_argument("--cpus", type=int, default=None, metavar="N",
                   help="CPU cores of the target, for models planned on the CPU (default: this host's)")
    g.add_argument("--cpu-features", default=None, metavar="LIST",
                   help="the target CPU's instruction sets, e.g. avx512_vnni,amx_int8, or none (default: this "
                        "host's; INT8 on the CPU needs VNNI or AMX)")
    g.add_argument("--server", choices=("embedded", "ngc"), default=None,
                   help="serving Triton: the embedded PyPI tritonserver (python backend only; the default) or the "
                        "NGC image")
    g.add_argument("--ngc-release", default=None, metavar="YY.MM",
                   help=f"NGC tritonserver release to render for (default: the pinned {defaults.NGC_RELEASE})")
    g.add_argument("--allow-insecure-release", action="store_true", default=None,
                   help=f"accept an NGC release older than {defaults.NGC_SECURE_FLOOR} (before the 2025 security fixes)")
    g.add_argument("--no-tensorrt", action="store_true", default=None,
                   help="NGC target where no TensorRT plan can be built: ONNX Runtime with its TensorRT accelerator")


def _given_planning_flags(args) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in PLANNING_DEFAULTS if getattr(args, k, None) is not None]


def _planning(args) -> argparse.Namespace:
    """The planning flags with their defaults filled in."""
    return argparse.Namespace(**{k: v if (v := getattr(args, k, None)) is not None else d
                                 for k, d in PLANNING_DEFAULTS.items()})


def _capabilities(flags, hardware, server):
    from .plan import Capabilities
    # Plans are built only for a TensorRT we know the server has (the pinned release's).
    caps = Capabilities(tensorrt_build=not flags.no_tensorrt and server.tensorrt_version is not None)
    if flags.server == "embedded" and hardware.gpus:  # only the PyTorch path needs torch's own threshold
        from dataclasses import replace

        from .torch_facts import inductor_min_sms
        sms, source = inductor_min_sms()
        caps = replace(caps, inductor_min_sms=sms, inductor_source=source)
    return caps


def _make_plans(args):
    """(spec, plans): one plan, or one per GPU type when --gpu names a fleet (T4,L4,H100)."""
    from .hardware import parse_cpu_features, resolve
    from .policy import plan_fleet
    from .servers import server_target
    from .spec import load_spec
    flags = _planning(args)
    if flags.cpus is not None and flags.cpus < 1:
        raise UserError("CPU cores must be >= 1", where="--cpus", actual=flags.cpus, expected=">= 1")
    features = parse_cpu_features(flags.cpu_features) if flags.cpu_features is not None else None
    hardware = resolve(flags.gpu, flags.cpus, features)
    server = server_target(flags.server, flags.ngc_release, flags.allow_insecure_release)
    spec = load_spec(flags.spec)
    return spec, plan_fleet(spec, hardware, server, _capabilities(flags, hardware, server))


def _refuse_planning_flags(args, why: str) -> None:
    given = _given_planning_flags(args)
    if given:
        raise UserError(f"planning flags given to a step that {why}", where="command line",
                        actual=" ".join(given), expected="no planning flags", fix="plan again instead: `tritonkit render <flags> --out DIR` "
                        "(or `tritonkit plan <flags> --out plan.json`)")


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
    from .hardware import CPU_FEATURES, detect
    hw = detect()
    if args.json:
        print(json.dumps(asdict(hw), indent=2))
        return 0
    print(hw.describe())
    print(f"  CPU: {', '.join(hw.cpu_features) or 'none'} of {', '.join(CPU_FEATURES)}")
    for g in hw.gpus:
        print(f"  GPU{g.index}: {g.name}: {g.sm_count} SMs, compute capability "
              f"{g.compute_capability[0]}.{g.compute_capability[1]}, {g.memory_gib:.1f} GiB, "
              f"precisions {', '.join(g.precisions)}")
    return 0


def cmd_plan(args) -> int:
    from .plan_file import plan_json
    _, plans = _make_plans(args)
    if args.out:
        args.out.write_bytes(plan_json(plans))
    if args.json:
        sys.stdout.write(plan_json(plans).decode())
    else:
        print_decisions(plans, _console())
    if args.out:
        _console().print(f"plan written to {args.out}; render it with `tritonkit render --plan {args.out} --out DIR`")
    return 0


def _check(repo: Path, console) -> int:
    """render --check: the repository against its own plan.json (never this host): the spec it was planned
    from, what this tritonkit's policy decides from the same inputs, and the rendered files."""
    from .plan_file import read_plans
    from .render import check_repository
    plans = read_plans(repo)
    changes = _replan_changes(plans)
    return _report_drift(repo, changes, check_repository(plans, repo), console, "`tritonkit render`")


def _report_drift(out: Path, changes: list[str], drift, console, command: str) -> int:
    """--check's verdict: 0 when the folder is what its own recorded inputs render today, else 1 and why."""
    for line in changes:
        console.print(f"plan: {line}")
    for label, items in (("missing", drift.missing), ("changed", drift.changed), ("not rendered", drift.extra)):
        for rel in items:
            console.print(f"{label}: {rel}")
    if drift.diff:
        sys.stdout.write(drift.diff)
    if drift.clean and not changes:
        console.print(f"{out}: up to date with its plan.json and spec ({len(list(out.rglob('*')))} entries)")
        return 0
    console.print(f"{out} differs from what its plan and spec render; run {command} (with the flags you "
                  "planned with) to update it")
    return 1


def _replan_changes(plans) -> list[str]:
    from .plan_file import plan_differences, replan
    try:
        return plan_differences(plans, replan(plans))
    except UserError as exc:
        return [exc.render()]


def cmd_render(args) -> int:
    from .render import render_files, validate_files, write_repository
    console = _console()
    if args.check:
        _refuse_planning_flags(args, "checks an existing plan")
        if args.plan:
            raise UserError("--check reads the repository's own plan.json", where="--plan", fix="drop --plan")
        return _check(args.out, console)
    if args.plan:
        from .plan_file import read_plans
        _refuse_planning_flags(args, "renders a finished plan (--plan)")
        plan = read_plans(args.plan)
    else:
        _, plan = _make_plans(args)
    if args.explain:
        print_decisions(plan, console)
    files = render_files(plan)
    validate_files(plan, files)
    write_repository(plan, args.out, files)
    variants = "" if len(plan) == 1 else (f", {len(plan)} GPU variants (start each server with "
                                          f"--model-config-name=<variant>)")
    console.print(f"rendered {len(plan[0].models)} models ({len(files)} files{variants}) into {args.out}; every "
                  "config parsed with Triton's model_config schema")
    return 0


def cmd_build(args) -> int:
    from .build import build
    for r in build(args.repo, force=args.force):   # a fleet builds this host's GPU type, reports the others
        print(r.summary())
    return 0


def cmd_k8s(args) -> int:
    from .k8s import check_tree, fleet_files, recorded, write_fleet
    from .plan_file import load_spec, read_plans
    console = _console()
    if args.check:
        _refuse_planning_flags(args, "checks an existing tree")
        if args.capacity or args.repo or args.out:
            raise UserError("--check reads the tree's own plan.json and fleet.json", where="command line",
                            actual=" ".join(f for f, v in (("--capacity", args.capacity), ("--repo", args.repo),
                                                           ("--out", args.out)) if v),
                            expected="only --check DIR", fix="drop the other options")
        plans, figures = recorded(args.check)
        fleet = fleet_files(plans, figures, load_spec(plans))
        return _report_drift(args.check, _replan_changes(plans), check_tree(args.check, fleet), console,
                             "`tritonkit k8s`")
    if args.out is None:
        raise UserError("no output folder", where="--out", expected="a folder for the kustomize tree",
                        fix="e.g. tritonkit k8s --repo model_repository --out k8s")
    if _given_planning_flags(args):
        if args.repo:
            raise UserError("a plan comes from --repo or from planning flags, not both", where="--repo",
                            actual=str(args.repo), fix="drop --repo to plan here, or drop the planning flags")
        spec, plans = _make_plans(args)
    else:
        plans = read_plans(args.repo or defaults.DEFAULT_REPOSITORY)
        spec = load_spec(plans)
    fleet = fleet_files(plans, _capacity_figures(args.capacity, plans), spec)
    write_fleet(fleet, args.out)
    _print_fleet(fleet, console)
    console.print(f"wrote {len(fleet.files)} files to {args.out}: `kubectl apply -k {args.out}` (the whole fleet), "
                  f"or -k {args.out}/overlays/<variant>; {args.out}/README.md says how the repository gets there")
    return 0


def _capacity_figures(texts: list[str], plans) -> tuple:
    from .k8s_sizing import read_capacity
    from .render import variant_name
    variants = tuple(variant_name(p) for p in plans)
    figures = [f for text in texts for f in read_capacity(text, variants)]
    seen = [(f.variant, f.model) for f in figures]
    dupes = sorted({f"{v}/{m}" for v, m in seen if seen.count((v, m)) > 1})
    if dupes:
        raise UserError("two capacity figures for one product and model", where="--capacity", actual=dupes,
                        expected="one report per variant and model")
    return tuple(figures)


def _print_fleet(fleet, console) -> None:
    from rich.table import Table
    table = Table(title="Kubernetes fleet: one Deployment + HPA per product", show_lines=False)
    for col in ("variant", "min", "max", "replicas: why", "resources", "startup"):
        table.add_column(col, overflow="fold")
    for r in fleet.replicas:
        table.add_row(r.variant, str(r.min), str(r.max), r.reason, fleet.resources[r.variant],
                      f"{fleet.startup_s[r.variant]} s")
    console.print(table)


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
    from .plan_file import PLAN_FILE, check_serving_host, read_plans
    from .serve import serve
    if (args.repo / PLAN_FILE).is_file():   # a hand-made Triton repository has no plan to hold the host to
        check_serving_host(read_plans(args.repo), args.repo)
    return serve(_server_options(args))


def _bench_and_report(model, url: str, args) -> int:
    from .load import run_bench
    from .report import print_report, write_report
    from .workload import bench_target
    target = bench_target(model, url, args.protocol, batch=args.batch)
    budget = args.budget_ms if args.budget_ms is not None else model.p99_budget_ms
    # Rates alone mean an open-loop run; the default concurrency sweep runs only when nothing else is asked.
    concurrency = args.concurrency if args.concurrency is not None else \
        (() if args.request_rate or args.find_capacity else defaults.BENCH_CONCURRENCY)
    report = run_bench(target, concurrency=concurrency, request_rates=args.request_rate or (),
                       requests_per_level=args.requests, duration_s=args.duration, budget_p99_ms=budget,
                       progress=not args.no_progress, poisson=args.arrival == "poisson",
                       find_capacity=args.find_capacity, processes=args.client_processes)
    print_report(report)
    paths = write_report(report, args.reports, stem=f"bench-{model.name}-{args.protocol}")
    print("report: " + "  ".join(str(p) for p in paths.values()))
    return 0 if report.verdict else 1


def cmd_bench(args) -> int:
    from .plan_file import load_spec, read_plans
    spec = load_spec(read_plans(args.repo), sources=False)   # what the repository serves, as it was planned
    models = (spec.model(args.model),) if args.model else spec.models
    port = args.grpc_port if args.protocol == "grpc" else args.http_port
    code = 0
    for model in models:
        code |= _bench_and_report(model, args.url or f"{defaults.BIND_ADDRESS}:{port}", args)
    return code


def cmd_demo(args) -> int:
    """detect -> plan -> render -> build -> serve (embedded) -> bench -> stop."""
    from .build import build
    from .render import write_repository
    from .serve import EmbeddedServer
    console = _console()
    if args.server not in (None, "embedded"):
        raise UserError("demo serves on the embedded server", where="--server", actual=args.server,
                        expected="embedded", fix="for the NGC image: `tritonkit render --server ngc` and docker compose")
    args.find_capacity = True   # the demo's headline: the request rate served within the spec's budget...
    args.concurrency = args.concurrency or defaults.BENCH_CONCURRENCY   # ...after the closed-loop sweep
    spec, plans = _make_plans(args)
    if len(plans) > 1:
        raise UserError("demo serves one GPU type", where="--gpu", actual=args.gpu, expected="a single GPU type",
                        fix="render fleets with `tritonkit render --gpu A,B`; serve each variant on its own host")
    print_decisions(plans, console)
    write_repository(plans, args.repo)
    console.print(f"[1/4] rendered {args.repo}")
    for r in build(args.repo, spec=spec):
        console.print(f"[2/4] {r.summary()}")
    with EmbeddedServer(_server_options(args)) as server:
        console.print(f"[3/4] embedded Triton {server.triton.version} ready on {server.grpc_url} (gRPC) and "
                      f"{server.http_url} (HTTP); development/CI server, loopback only")
        code = 0
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        for model in spec.models:
            console.print(f"[4/4] measuring {model.name} over {'gRPC' if args.protocol == 'grpc' else 'HTTP'}")
            code |= _bench_and_report(model, url, args)
    console.print("server stopped")
    return code


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    _repo_arg(g)
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


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated requests/s like 50,100,200, got {text!r}") from None
    if not rates or not all(r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"request rates must be > 0, got {text!r}")
    return rates


def _repo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", "--repository", dest="repo", type=Path, default=defaults.DEFAULT_REPOSITORY,
                   help="model repository, with the plan.json render wrote (default: %(default)s)")


def _bench_args(p: argparse.ArgumentParser, with_url: bool) -> None:
    g = p.add_argument_group("measurement")
    if with_url:
        _repo_arg(g)
        g.add_argument("--model", default=None, help="spec model to measure (default: every model of the plan)")
        g.add_argument("--url", default=None, help="host:port of the server (default: 127.0.0.1 and the port flag)")
        g.add_argument("--http-port", type=int, default=defaults.HTTP_PORT)
        g.add_argument("--grpc-port", type=int, default=defaults.GRPC_PORT)
    g.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    g.add_argument("--concurrency", type=_concurrency, default=None,
                   help=f"closed loop: comma-separated levels of requests in flight (default: "
                        f"{','.join(map(str, defaults.BENCH_CONCURRENCY))} unless rates or --find-capacity are given)")
    g.add_argument("--requests", type=int, default=defaults.BENCH_REQUESTS_PER_LEVEL,
                   help="requests per closed-loop level (default: %(default)s)")
    g.add_argument("--request-rate", type=_rates, default=None, metavar="R1,R2,...",
                   help="open loop: offer these requests/s, latency counted from each request's due time")
    g.add_argument("--arrival", choices=("poisson", "constant"), default="poisson",
                   help="open-loop arrivals (default: %(default)s)")
    g.add_argument("--duration", type=float, default=defaults.BENCH_OPEN_LOOP_S,
                   help="seconds per open-loop rate (default: %(default)s)")
    g.add_argument("--find-capacity", action="store_true",
                   help="search the highest request rate whose p99 stays within the budget with no errors")
    g.add_argument("--client-processes", type=int, default=None, metavar="N",
                   help="gRPC client processes (default: one per 4 cores of this host, at most 8)")
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
    p.add_argument("--json", action="store_true", help="print the plan as JSON (what plan.json holds)")
    p.add_argument("--out", type=Path, default=None, help="write the plan to this file (render it with --plan)")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("render", help="spec + hardware -> plan -> model repository (validated, written atomically)")
    _planning_args(p)
    p.add_argument("--plan", type=Path, default=None,
                   help="render this plan file (from `tritonkit plan --out`) instead of planning")
    p.add_argument("--out", "--repo", dest="out", type=Path, default=defaults.DEFAULT_REPOSITORY,
                   help="repository (default: %(default)s)")
    p.add_argument("--explain", action="store_true", help="print every decision with its reason")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the repository differs from what its plan.json and spec render")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("build", help="produce and validate the artifacts the repository's plan names (ONNX, TensorRT "
                                     "plans, PyTorch weights, tokenizer), with build.json and reproduce.sh")
    _repo_arg(p)
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

    p = sub.add_parser("bench", help="latency/throughput sweep of the repository's models against a running server; "
                                     "fails over the spec's p99 budget")
    _bench_args(p, with_url=True)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("k8s", help="plan -> Kubernetes fleet: kustomize base + one overlay per GPU product (Deployment "
                                   "with node affinity, HPA, PDB), Service, NetworkPolicy, monitoring")
    _planning_args(p)
    p.add_argument("--repo", "--repository", dest="repo", type=Path, default=None,
                   help=f"the rendered repository whose plan.json to deploy (default: {defaults.DEFAULT_REPOSITORY}, "
                        "unless planning flags are given)")
    p.add_argument("--out", type=Path, default=None, help="folder for the kustomize tree (written atomically)")
    p.add_argument("--capacity", action="append", default=[], metavar="[VARIANT=]FILE",
                   help="a `tritonkit bench --find-capacity` JSON report measured on a host of VARIANT; with the "
                        "spec's traffic.peak_rps it sizes that product's replicas (repeat per variant and model)")
    p.add_argument("--check", type=Path, default=None, metavar="DIR",
                   help="write nothing; exit 1 if DIR differs from what its plan.json and fleet.json render")
    p.set_defaults(run=cmd_k8s)

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
