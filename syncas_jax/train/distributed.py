"""Joining a multi-process (multi-host) training run: `jax.distributed` from flags, environment or the cluster.

Where the three facts come from, the first that gives each:

  1. the command line: --coordinator HOST:PORT, --num-processes N, --process-id I;
  2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  3. with --distributed, JAX's cluster auto-detection (SLURM, Open MPI, Kubernetes, TPU pods).

Process 0 runs the coordinator on HOST:PORT (it binds PORT on every interface of its host).
`jax.distributed.initialize` aborts the whole process when a peer never answers, so `join`
checks first what it can and raises an InputError naming the address: processes 1…N−1 wait
for the coordinator to accept connections, up to the timeout; process 0 reports a port it
cannot bind. Processes that never join within the timeout are reported through
`on_timeout` before JAX's own abort. After joining, `check_same_config` compares a hash of
every process's config: processes started differently stop at once with one error.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.multihost import differing_processes
from syncas_jax.train.config import Config

ENVIRONMENT = {
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}
FLAGS = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}
DEFAULT_TIMEOUT_S = 300.0
JAX_TIMEOUT_MARGIN_S = 60  # JAX's own time-out (an abort) comes this long after ours


@dataclass(frozen=True)
class ProcessGroup:
    """How this process joins a run; all None and auto_detect False: a single-process run.

    timeout_s: how long to wait for the coordinator and for every process to join (seconds).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto_detect: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        return None not in (self.coordinator, self.num_processes, self.process_id)

    @property
    def joins(self) -> bool:
        """Whether jax.distributed is needed at all (one explicit process needs no coordinator)."""
        return self.auto_detect or (self.explicit and self.num_processes > 1)


def _int_from_environment(name: str, environ: Mapping[str, str]) -> int | None:
    text = environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(name, f"must be an integer, got {text!r}") from None


def process_group(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] = os.environ,
) -> ProcessGroup:
    """The process group from command-line values (None when not given), then the environment.

    Without `auto_detect` a partial description (e.g. a coordinator but no process id) is an
    InputError naming what is missing; with it, JAX detects the missing values from the cluster.
    """
    number = {k: _int_from_environment(ENVIRONMENT[k], environ) for k in ("num_processes", "process_id")}
    group = ProcessGroup(
        coordinator or environ.get(ENVIRONMENT["coordinator"]) or None,
        num_processes if num_processes is not None else number["num_processes"],
        process_id if process_id is not None else number["process_id"],
        auto_detect,
        timeout_s,
    )
    check_process_group(group)
    return group


def check_process_group(group: ProcessGroup) -> None:
    """InputError for a partial description (without auto-detection), bad numbers or a malformed address."""
    values = {"coordinator": group.coordinator, "num_processes": group.num_processes, "process_id": group.process_id}
    given = [key for key, value in values.items() if value is not None]
    if given and len(given) < 3 and not group.auto_detect:
        missing = " and ".join(f"{FLAGS[k]} (or {ENVIRONMENT[k]})" for k in values if values[k] is None)
        raise InputError(None, f"{FLAGS[given[0]]} needs {missing}; or add --distributed to detect them")
    if group.timeout_s <= 0:
        raise InputError(None, f"the join timeout must be positive, got {group.timeout_s}")
    if group.num_processes is not None and group.num_processes < 1:
        raise InputError(None, f"--num-processes must be at least 1, got {group.num_processes}")
    n, i = group.num_processes, group.process_id
    if n is not None and i is not None and not 0 <= i < n:
        raise InputError(None, f"--process-id must lie in [0, {n}), got {i}")
    if group.coordinator is not None:
        parse_address(group.coordinator)


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of 'HOST:PORT' ('[v6]:PORT' too); InputError naming the address when malformed."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(address, "coordinator address must be HOST:PORT (e.g. 10.0.0.1:1234)")
    return host, int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once a TCP connection to the coordinator succeeds; InputError naming it after `timeout_s`."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise InputError(
                    address,
                    f"coordinator not reachable within {timeout_s:g} s ({error.strerror or error}); is process 0 "
                    "running there, and do the address, the port and the firewall allow it?",
                ) from None
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))


def join(group: ProcessGroup, on_timeout: Callable[[str], None]) -> None:
    """Initialise jax.distributed for `group` (nothing for a single process).

    on_timeout(message) runs, from another thread, when the processes have not all joined
    within group.timeout_s; it should end the process (JAX aborts it soon after otherwise).
    """
    if not group.joins:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    if group.explicit and group.process_id != 0:  # process 0 starts the coordinator itself
        wait_for_coordinator(group.coordinator, group.timeout_s)
    where = group.coordinator or "cluster auto-detection"
    expected = f"all {group.num_processes} processes" if group.num_processes else "all processes"
    timer = threading.Timer(
        group.timeout_s,
        on_timeout,
        [f"{where}: {expected} did not join within {group.timeout_s:g} s (start the same command on every host)"],
    )
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            group.coordinator,
            group.num_processes,
            group.process_id,
            initialization_timeout=int(group.timeout_s) + JAX_TIMEOUT_MARGIN_S,
        )
    except ValueError as error:  # auto-detection found no cluster
        raise InputError(
            None,
            f"--distributed: {error} No cluster environment detected (SLURM, Open MPI, TPU pod); give "
            "--coordinator HOST:PORT --num-processes N --process-id I (or set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID)",
        ) from None
    except RuntimeError as error:  # e.g. process 0 cannot start the coordinator: its port is taken
        raise InputError(where, f"cannot join the run ({error}); is the port already in use?") from None
    finally:
        timer.cancel()


def config_digest(config: Config, resume: bool) -> np.ndarray:
    """SHA-256 of the flat config and the resume flag, as (8,) uint32 (what every process must agree on)."""
    text = json.dumps({"config": config.to_flat(), "resume": resume}, sort_keys=True)
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint32).copy()


def check_same_config(config: Config, resume: bool) -> None:
    """InputError on every process when any process was started with another config or --resume (collective)."""
    differ = differing_processes(config_digest(config, resume))
    if differ:
        raise InputError(
            None,
            f"processes {differ} were started with a different config than process 0 (config hash compared across "
            "processes); start every process with the same --config, --set and --resume",
        )
