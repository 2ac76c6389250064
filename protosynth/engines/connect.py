"""Where the heavy stages run: in this process (``local``) or on a Ray cluster (``ray``): the
configuration, its checks and the Ray session. The stages call an ``engines.Engine`` that
``engines.make_engine`` makes from an ``EngineConfig``; the Ray engine (``protosynth.engines.ray``)
imports this module, and this module imports neither it nor any stage.

Ray is an optional extra (``pip install -e '.[ray]'``): it is imported only here, inside
``import_ray``, and by the ``protosynth.engines.ray`` modules, which only ``engines.make_engine`` imports
when the Ray engine is asked for, so every verb works without it.

protosynth runs no scheduler of its own on Ray: embedding is a Ray Data pipeline (CPU tasks decode,
an actor pool encodes), clustering Ray tasks over the store's shards, rendering an actor pool; the
driver (this process) plans the work, writes every file and holds only what the local engine holds.

``ray_session(cfg)`` connects (``address``: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) or
starts a local Ray instance (``address=None``), and shuts it down again; a session already open in
this process (a script's or a test's own ``ray.init``) is used as it is and left open.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

from ..configs import ENGINES, EngineConfig  # noqa: F401 (re-exported: their public home)
from ..errors import P, ProtosynthError

EXTRA = "pip install -e '.[ray]'"
CONNECT_TIMEOUT = 5.0  # seconds to reach HOST:PORT before ray.init, which would retry for minutes


def check_engine(cfg: EngineConfig) -> None:
    """The checks before any work: the values, that Ray is installed, and that something answers at a
    ``HOST:PORT`` address."""
    cfg.check()
    if not cfg.on_ray:
        return
    import_ray()
    if cfg.address not in (None, "auto"):
        _reachable(cfg.address)


def import_ray():
    """The ``ray`` module, or one line naming the extra that installs it."""
    try:
        import ray  # noqa: PLC0415 -- an optional extra: imported only when the ray engine is asked for
        import ray.data  # noqa: F401, PLC0415 -- the same extra, its Ray Data part
    except ImportError:
        raise ProtosynthError(f"{P.engine('ray')} needs Ray: {EXTRA}", param="engine") from None
    return ray


def _reachable(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing answers on is one line now, not minutes
    of ray.init retrying and logging to stderr."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ProtosynthError(f"{P.address} {address!r}: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT) as conn:
            # a TLS cluster (RAY_USE_TLS) answers a plaintext preface with a TLS alert: only the TCP check there
            speaks_grpc = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or _answers_http2(conn)
    except OSError as exc:
        raise ProtosynthError(f"{P.address} {address}: no Ray cluster answers there ({exc.strerror or exc})") from None
    if not speaks_grpc:
        raise ProtosynthError(
            f"{P.address} {address}: something answers there, but not a Ray cluster (no gRPC); the head's "
            "address is the one `ray start` prints there (port 6379 by default; not the dashboard's 8265)"
        )


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the server on ``conn`` speaks HTTP/2, as Ray's GCS and Ray Client (gRPC) do: it answers
    the client preface with a SETTINGS frame (RFC 9113, 3.4). Another service on the port (the
    dashboard's HTTP/1.1, anything that hangs up) would otherwise leave ray.init retrying for minutes."""
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    head = b""
    try:
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # reset or no answer within CONNECT_TIMEOUT
        return False
    length, kind, flags, stream = int.from_bytes(head[:3], "big"), head[3], head[4], head[5:9]
    return kind == 0x04 and not flags & 0x01 and stream == b"\0\0\0\0" and length % 6 == 0


def _quiet(ray) -> None:
    """Ray Data's progress bars and INFO logs would bury protosynth's own output and its one-line errors."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # batches come back in plan order: deterministic shards
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def ray_session(cfg: EngineConfig):
    """Yield the ``ray`` module with a session open (see the module docstring)."""
    ray = import_ray()
    if ray.is_initialized():
        _quiet(ray)
        yield ray
        return
    if cfg.address not in (None, "auto"):
        _reachable(cfg.address)
    env = {k: v for k, v in os.environ.items() if k in ("OMP_WAIT_POLICY", "PROTOSYNTH_CACHE", "HF_HUB_OFFLINE")}
    try:
        ray.init(
            address=cfg.address,
            logging_level=logging.ERROR,
            log_to_driver=False,
            include_dashboard=False,
            configure_logging=True,
            runtime_env={"env_vars": env} if env else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtosynthError(f"{P.address} {cfg.address or '(local)'}: cannot start or join Ray ({first})") from None
    _quiet(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def unwrap(exc: BaseException) -> BaseException:
    """The ProtosynthError behind an error Ray raised (a task's or an actor's, wrapped in
    RayTaskError and Ray Data's UserCodeException), as a plain ProtosynthError whose message is the
    original one line; any other error unchanged."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        wrapper = hasattr(e, "as_instanceof_cause")  # Ray's RayTaskError, also when it subclasses the cause
        if isinstance(e, ProtosynthError) and not wrapper:
            return e if e is exc else ProtosynthError(e.template, e.param)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return exc


@contextmanager
def unwrapped():
    """Re-raise a ProtosynthError that Ray wrapped as that one-line error (see ``unwrap``)."""
    try:
        yield
    except Exception as exc:
        err = unwrap(exc)
        if err is exc:
            raise
        raise err from None
