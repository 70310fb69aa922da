"""Warm learner processes: Ray workers started ahead of the trials that need them, their imports done.

A trial's learner is a fresh process (actors are never reused across trials: Tune turned
``reuse_actors`` off for its race conditions). Before it can load data it imports torch,
geoopt (with ``scipy.optimize``) and the model code: ~2.5 s of CPU, most of a trial's
start-up on a 2-core machine, measured (docs/benchmarks.md, Ray); its optimizer
(:mod:`halo_ray.optim`) does not import ``torch._dynamo`` as ``torch.optim`` would. Here the
search asks each node's raylet to start learner processes ahead of time (Ray's
``PrestartWorkers``); their worker set-up hook (:func:`preimport`) does those imports while
they wait. A learner or source pre-training created with
:func:`learner_runtime_env` then starts in one of them when one is idle, or in a fresh
process that runs the same hook first. Each process still serves one actor: nothing is
shared between trials.

This uses Ray internals (the raylet's ``PrestartWorkers`` call and the set-up hook's
environment variable): when they are missing, :func:`prestart_learners` raises
:class:`WarmStartError` and the search says so and starts its learners cold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: the hook every learner process runs when it starts (a module path: workers import it)
HOOK = "halo_ray.distributed.warm.preimport"

#: seconds an idle warm process is kept before the raylet may stop it
KEEP_ALIVE_S = 900

#: ``time.time()`` when this process's :func:`preimport` finished; None: it has not run here
PREIMPORTED_AT: float | None = None


class WarmStartError(RuntimeError):
    """Learner processes could not be started ahead (the Ray version lacks what this uses)."""


def preimport() -> None:
    """Worker set-up hook of learner processes: import what a learner needs before it is asked.

    Imports only: it touches no CUDA device, so the GPU Ray later gives the actor
    (``CUDA_VISIBLE_DEVICES``) is still the one its first CUDA call sees.
    """
    global PREIMPORTED_AT
    import halo_ray.distributed.actors  # noqa: F401 - the actor classes' module, unpickled with the actor
    import halo_ray.learner  # noqa: F401 - torch, geoopt, the models, the data
    import halo_ray.run.checkpointer  # noqa: F401 - the learner makes and reads checkpoint bytes (pandas)

    PREIMPORTED_AT = time.time()


def process_started_at() -> float | None:
    """``time.time()`` when this process started, to Linux's 10 ms ticks (its age from
    ``/proc``); None elsewhere. A process started ahead started before its actor was asked for."""
    import os

    try:
        stat = Path("/proc/self/stat").read_text()
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, AttributeError):  # not Linux
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
    return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


def learner_runtime_env() -> dict[str, Any]:
    """The runtime environment of learner, scorer and source pre-training processes: Ray's
    worker set-up hook set to :func:`preimport` (Ray takes the hook itself only per job, so
    it is set through the variable Ray's job-level hook sets); empty when this Ray has none."""
    try:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    except ImportError:  # pragma: no cover - depends on the Ray version
        return {}
    return {"env_vars": {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: HOOK}}


def trial_runtime_env() -> dict[str, Any]:
    """The runtime environment of a Tune trial's process, seen from the search's driver: the
    job's, plus the variables Tune gives its trainables (``PL_DISABLE_FORK`` and those it
    passes on from the driver's environment), as Tune's actor class cache builds it."""
    import os

    import ray

    try:
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE
    except ImportError as err:  # pragma: no cover - depends on the Ray version
        raise WarmStartError(f"this Ray Tune does not say what its trials' environment is ({err})") from None
    tune_vars = {**DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ}}
    job = dict(ray.get_runtime_context().runtime_env)
    if not tune_vars:
        return job
    return {**job, "env_vars": {**job.get("env_vars", {}), **tune_vars}}


def serialized_learner_env(parent: Mapping[str, Any] | None) -> str:
    """The runtime environment string a learner carries when a process whose own runtime
    environment is ``parent`` (a trial's: :func:`trial_runtime_env`) creates it: the raylet
    hands a prestarted process only to an actor whose string is the same.

    With no parent environment the learner's is serialized as given; otherwise Ray merges
    the two (``env_vars`` key by key, the child's other fields over the parent's) and writes
    compact JSON with sorted keys, as measured on Ray 2.60.
    """
    from ray.runtime_env import RuntimeEnv

    child = learner_runtime_env()
    if not child:
        raise WarmStartError("this Ray has no worker set-up hook variable")
    if not parent:
        return RuntimeEnv(**child).serialize()
    merged = {**parent, **child, "env_vars": {**parent.get("env_vars", {}), **child["env_vars"]}}
    return json.dumps(merged, separators=(",", ":"), sort_keys=True)


def prestart_learners(
    counts: Mapping[str, int], *, parent: Mapping[str, Any] | None = None, keep_alive_s: int = KEEP_ALIVE_S,
    nodes: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Ask the raylets of the given nodes (node id → how many) to start that many learner
    processes now; returns how many were asked for (the raylet starts them as fast as its
    start-up concurrency allows). ``nodes``: ``ray.nodes()``, when the caller has it already.

    ``parent`` is the runtime environment of the processes that will create the learners (a
    trial's: :func:`trial_runtime_env`). Raises :class:`WarmStartError` when this Ray cannot do it.
    """
    import ray

    wanted = {node: int(n) for node, n in counts.items() if int(n) > 0}
    if not wanted:
        return 0
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray._private.utils import get_runtime_env_info
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
        from ray.runtime_env import RuntimeEnv
    except ImportError as err:  # pragma: no cover - depends on the Ray version
        raise WarmStartError(f"this Ray cannot prestart workers ({err})") from None
    info = get_runtime_env_info(RuntimeEnv(**learner_runtime_env()), is_job_runtime_env=False, serialize=False)
    info.serialized_runtime_env = serialized_learner_env(parent)
    job = ray.get_runtime_context().get_job_id()
    alive = {n["NodeID"]: n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive")}
    asked, failures = 0, []
    for node_id, count in wanted.items():
        node = alive.get(node_id)
        if node is None:
            continue  # gone since the caller looked: nothing to warm there
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON, job_id=bytes.fromhex(job), runtime_env_info=info,
            keep_alive_duration_secs=int(keep_alive_s), num_workers=count,
        )
        channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
        except Exception as err:  # grpc errors: a raylet without the call, a node going away
            failures.append(f"node {node_id[:8]}: {type(err).__name__}: {err}")
            continue
        finally:
            channel.close()
        asked += count
    if failures and not asked:  # a node that went away is no reason to stop; every node failing is
        raise WarmStartError(f"no raylet prestarted workers ({'; '.join(failures)})")
    return asked


def learner_slots(nodes: Sequence[Mapping[str, Any]], cpus: float, gpus: float) -> dict[str, int]:
    """How many learners of ``cpus``/``gpus`` each alive node (``ray.nodes()`` entries) can hold at once."""
    slots: dict[str, int] = {}
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fit = int(have.get("CPU", 0.0) // cpus + 1e-9) if cpus > 0 else 0
        if gpus > 0:
            fit = min(fit, int(have.get("GPU", 0.0) // gpus + 1e-9))
        if fit > 0:
            slots[node["NodeID"]] = fit
    return slots


class WarmLearners:
    """Keeps learner processes warm ahead of a search's trials.

    :meth:`ahead` asks for learners spread over the nodes by how many each can hold;
    processes no learner takes end after ``keep_alive_s`` idle. The search asks for its
    source pre-training's processes and its first wave's at the start, for the first wave's
    again after a pre-training, and for one more trial's learners whenever a trial has
    finished starting while trials are still to come. A failure is reported once through
    ``log``; the learners then start cold.
    """

    def __init__(self, *, cpus: float, gpus: float, log=print, keep_alive_s: int = KEEP_ALIVE_S):
        self.cpus, self.gpus, self.log, self.keep_alive_s = cpus, gpus, log, keep_alive_s
        self.failed = False
        self._turn = 0  # rotates remainders over the nodes

    def spread(self, count: int, slots: Mapping[str, int]) -> dict[str, int]:
        """``count`` learners over nodes in proportion to ``slots`` (node id → learners it holds),
        none beyond a node's slots; a remainder goes to the nodes in turn."""
        if count <= 0 or not slots:
            return {}
        order = sorted(slots, key=lambda node: (-slots[node], node))
        total = sum(slots.values())
        out = {node: min(slots[node], count * slots[node] // total) for node in order}
        left = min(count, total) - sum(out.values())
        k = 0
        while left > 0:
            node = order[(self._turn + k) % len(order)]
            k += 1
            if out[node] < slots[node]:
                out[node] += 1
                left -= 1
        self._turn += 1
        return {node: n for node, n in out.items() if n}

    def ahead(self, count: int, *, for_trials: bool = True) -> int:
        """Ask for ``count`` more warm learner processes now, for learners the trials create
        (``for_trials``) or for tasks this process submits (the source pre-training); returns
        how many were asked for (0 once a request has failed)."""
        if self.failed or count <= 0:
            return 0
        import ray

        try:
            parent = trial_runtime_env() if for_trials else dict(ray.get_runtime_context().runtime_env)
            nodes = ray.nodes()
            return prestart_learners(
                self.spread(count, learner_slots(nodes, self.cpus, self.gpus)),
                parent=parent, keep_alive_s=self.keep_alive_s, nodes=nodes,
            )
        except WarmStartError as err:
            self.failed = True
            self.log(f"learner processes start cold: {err}")
            return 0


__all__ = [
    "HOOK", "WarmLearners", "WarmStartError", "learner_runtime_env", "learner_slots", "preimport", "prestart_learners",
    "process_started_at", "serialized_learner_env", "trial_runtime_env",
]
