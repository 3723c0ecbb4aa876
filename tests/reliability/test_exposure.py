"""Property 10: exposure by default. Model control mode none; the model-repository, shared-memory, trace
and logging APIs restricted on HTTP and gRPC; every listener on 127.0.0.1.

tests/test_serve.py::test_admin_apis_restricted_bench_apis_open covers five HTTP endpoints and the gRPC
repository index, and test_listens_on_loopback_only the three configured ports. This adds the other
endpoints of each restricted API over both protocols, model control none even for the admin, no
listener beyond the three ports, and the defaults a user gets from the `tritonkit serve` command line.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from .helpers import raw_http

RESTRICTED = "This API is restricted, expecting header 'tritonkit-admin'"
GRPC_RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-tritonkit-admin'"

# Endpoints of the restricted APIs not already checked in tests/test_serve.py.
HTTP_ENDPOINTS = [
    ("POST", "/v2/repository/models/minilm/load", b""),
    ("POST", "/v2/systemsharedmemory/region/r0/register", b'{"key": "/k", "offset": 0, "byte_size": 8}'),
    ("POST", "/v2/systemsharedmemory/region/r0/unregister", b""),
    ("POST", "/v2/systemsharedmemory/unregister", b""),
    ("GET", "/v2/cudasharedmemory/status", None),
    ("POST", "/v2/cudasharedmemory/region/r0/register", b'{"raw_handle": {"b64": "AA=="}, "device_id": 0, "byte_size": 8}'),
    ("POST", "/v2/cudasharedmemory/unregister", b""),
    ("POST", "/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
    ("GET", "/v2/models/minilm/trace/setting", None),
    ("POST", "/v2/models/minilm/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
    ("POST", "/v2/logging", b'{"log_verbose_level": 1}'),
]


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path", "body"), HTTP_ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in HTTP_ENDPOINTS])
def test_restricted_http_endpoint_refuses_without_the_header(minilm_server, method, path, body):
    """Prevents any local user loading models, mapping shared memory into the server, or turning on
    tracing/verbose logging (which write request data to disk) through an endpoint left open."""
    status, answer, _ = raw_http(minilm_server.options.http_port, method, path, body)
    assert status == 403 and RESTRICTED in answer.decode(), (status, answer)


def _grpc_calls():
    from tritonclient.grpc import service_pb2 as pb
    shm = pb.SystemSharedMemoryRegisterRequest(name="r0", key="/k", offset=0, byte_size=8)
    cuda = pb.CudaSharedMemoryRegisterRequest(name="r0", raw_handle=b"\0", device_id=0, byte_size=8)
    trace = pb.TraceSettingRequest()
    trace.settings["trace_level"].value.append("TIMESTAMPS")
    log = pb.LogSettingsRequest()
    log.settings["log_verbose_level"].uint32_param = 1
    return {
        "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="minilm"),
        "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="minilm"),
        "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest(),
        "SystemSharedMemoryRegister": shm,
        "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest(),
        "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest(),
        "CudaSharedMemoryRegister": cuda,
        "CudaSharedMemoryUnregister": pb.CudaSharedMemoryUnregisterRequest(),
        "TraceSetting (read)": pb.TraceSettingRequest(),
        "TraceSetting (update)": trace,
        "LogSettings (read)": pb.LogSettingsRequest(),
        "LogSettings (update)": log,
    }


GRPC_METHODS = ["RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
                "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting (read)",
                "TraceSetting (update)", "LogSettings (read)", "LogSettings (update)"]


@pytest.fixture(scope="module")
def grpc_stub(minilm_server):
    import grpc
    from tritonclient.grpc import service_pb2_grpc
    channel = grpc.insecure_channel(minilm_server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.integration
@pytest.mark.parametrize("call", GRPC_METHODS)
def test_restricted_grpc_method_refuses_without_the_header(minilm_server, grpc_stub, call):
    """Prevents the gRPC side of an admin API staying open when its HTTP side is restricted (two
    separate flags in 2.51: --http-restricted-api and --grpc-restricted-protocol)."""
    import grpc
    request = _grpc_calls()[call]
    with pytest.raises(grpc.RpcError) as err:
        getattr(grpc_stub, call.split(" ")[0])(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and GRPC_RESTRICTED in err.value.details(), \
        (err.value.code(), err.value.details())


@pytest.mark.integration
def test_model_control_none_refuses_load_even_with_the_admin_header(minilm_server, grpc_stub):
    """Prevents the admin header turning into a model loader: with model control mode none, what is served
    is what was in the repository at start, whoever asks."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    assert "--model-control-mode=none" in minilm_server.command()
    status, answer, _ = raw_http(minilm_server.options.http_port, "POST", "/v2/repository/models/minilm/load",
                                 b"", minilm_server.admin_headers)
    assert status == 503 and b"explicit model load / unload is not allowed" in answer, (status, answer)
    metadata = tuple(minilm_server.admin_headers.items())
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="minilm"), metadata=metadata, timeout=10)
    assert "explicit model load / unload is not allowed" in err.value.details()
    assert raw_http(minilm_server.options.http_port, "GET", "/v2/models/minilm/ready")[0] == 200


def _listening_sockets(pid: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of every TCP LISTEN socket held by `pid`, via /proc/<pid>/fd and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, width, 8))
            ip = ipaddress.ip_address(raw)
            found.append((ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip, int(hex_port, 16)))
    return found


@pytest.mark.integration
def test_no_listener_beyond_the_three_loopback_ports(minilm_server):
    """Prevents an endpoint nobody configured (SageMaker/Vertex frontends, a second metrics port, a wildcard
    bind) listening next to the three tritonkit asked for."""
    o = minilm_server.options
    sockets = _listening_sockets(minilm_server.pid)
    assert sorted(port for _, port in sockets) == sorted([o.http_port, o.grpc_port, o.metrics_port]), sockets
    assert all(ip == ipaddress.ip_address("127.0.0.1") for ip, _ in sockets), sockets


def test_cli_defaults_are_loopback_restricted_and_model_control_none():
    """Prevents a default of the `tritonkit serve` command line (not only ServerOptions) exposing the server:
    the address a user gets without flags, the restricted APIs and the model control mode."""
    from tritonkit.cli import _server_options, build_parser
    from tritonkit.serve import DEFAULT_RESTRICTED_APIS, EmbeddedServer
    options = _server_options(build_parser().parse_args(["serve"]))
    assert options.address == "127.0.0.1" and options.fail_fast
    cmd = EmbeddedServer(options).command()
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none"):
        assert flag in cmd, (flag, cmd)
    assert set(DEFAULT_RESTRICTED_APIS) == {"model-repository", "shared-memory", "trace", "logging"}
    for prefix in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        (rule,) = [c for c in cmd if c.startswith(prefix)]
        assert rule[len(prefix):].split(":")[0].split(",") == list(DEFAULT_RESTRICTED_APIS), rule
