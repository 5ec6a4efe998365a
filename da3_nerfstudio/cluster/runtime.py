"""Starting or joining a Ray runtime, on loopback unless the user names a cluster.

Ray has no authentication by default: a head listening on a network interface accepts jobs from anyone
who reaches it. On Linux, Ray 2.x replaces a loopback address (``127.0.0.1``, ``localhost``) by the
machine's network address (``ray._private.services.resolve_ip_for_localhost``) unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when ``ray`` is imported. The same rewrite is why a
driver cannot join a head started on loopback without that variable: it rewrites ``127.0.0.1:PORT`` to
``<network address>:PORT``, where nothing listens, and waits for the GCS until it times out. So the
variable is set for the local runtime and for joining a loopback address, and the node address is checked
after start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from da3_nerfstudio.errors import DA3Error

LOOPBACK = "127.0.0.1"
#: Ray reads this once at import: "0" keeps every address on loopback (see the module docstring).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: The raylet waits about 15 s for its agents' port files and then aborts (Ray 2.60, not configurable); on a
#: busy machine (measured here: load 10-15 on 2 cores) the agents' Python start alone can take longer, so a
#: failed local start is tried again (twice).
LOCAL_START_ATTEMPTS = 3
#: Ray 2.60 heads use token authentication when a token exists; a driver joining one sends it only when told.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_HINT = "RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"


@dataclass
class Runtime:
    """The Ray runtime this process is connected to."""

    address: str  # GCS address (host:port)
    node_ip: str  # the address Ray reports for this node
    local: bool  # started by us (and stopped by :func:`disconnect`)
    dashboard_url: str | None


def import_ray(loopback: bool) -> ModuleType:
    """``ray``, imported with Ray's loopback switch set as ``loopback`` asks; a one-line error without Ray."""
    if loopback:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
    except ImportError:
        raise DA3Error("Ray is not installed: pip install 'da3-nerfstudio[cluster]'") from None
    return ray


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` address names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_NAMES


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Runtime:
    """Join the cluster at ``address`` (``auto`` or ``host:port``), or start a local runtime on loopback.

    The local runtime runs no dashboard (the ``cluster`` extra installs Ray core: the dashboard's
    dependencies need protobuf >= 5, which nerfstudio 1.1.5 forbids) and forwards no worker output.
    """
    local = address is None
    ray = import_ray(loopback=local or is_loopback(address))
    if ray.is_initialized():
        raise DA3Error("this process is already connected to Ray; disconnect first")
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        ours = _children()
        try:
            if local:
                context = ray.init(
                    address="local",  # never a cluster named by $RAY_ADDRESS: exposure is the user's explicit choice
                    _node_ip_address=LOOPBACK,
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                context = ray.init(address=address, log_to_driver=False, configure_logging=False)
            break
        except Exception as err:  # noqa: BLE001 - Ray raises bare Exception when its processes do not come up in time
            ray.shutdown()
            _stop(_children() - ours)  # what a failed start left running (ray.shutdown leaves its GCS up)
            if local and attempt < LOCAL_START_ATTEMPTS:
                continue
            if local:
                raise DA3Error(f"the local Ray runtime did not start ({first_line(err)})") from None
            hint = "" if os.environ.get(AUTH_MODE_ENV) else f"; a cluster with token authentication needs {AUTH_HINT}"
            raise DA3Error(f"--ray-address {address}: cannot connect to Ray ({first_line(err)}){hint}") from None
    node_ip = context.address_info["node_ip_address"]
    if local and node_ip != LOOPBACK:
        ray.shutdown()
        raise DA3Error(
            f"the local Ray runtime bound {node_ip} instead of {LOOPBACK} (ray was imported before "
            f"{LOOPBACK_ENV}=0 could be set); refusing to run on a network interface"
        )
    return Runtime(context.address_info["gcs_address"], node_ip, local, context.dashboard_url or None)


def disconnect() -> None:
    """Leave the cluster; a local runtime is stopped with it."""
    import ray

    ray.shutdown()


def first_line(err: BaseException) -> str:
    """The first line of an error message (Ray's carry remote tracebacks), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop(pids: set[int]) -> None:
    """Kill the processes ``pids`` (started by this process) and wait for them."""
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=10)
