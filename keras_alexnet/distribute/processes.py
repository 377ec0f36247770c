"""Training over several processes: start-up, agreement, and what a lost process means."""

import contextlib
import dataclasses
import json
import os

import keras

from keras_alexnet._validation import changed_leaves, check_positive_int
from keras_alexnet.distribute.collectives import _batch_and_model_shape
from keras_alexnet.distribute.strategies import (
    MULTI_WORKER_MIRRORED_IS_BROKEN,
    TORCH_HAS_NO_DISTRIBUTION,
)

# JAX's defaults: seconds to wait for every process to join, and of
# silence after which a process counts as dead.
JOIN_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 100
ENVIRONMENT = {
    "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
    "job_addresses": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
}


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of one run: how many, which one this is, and where."""

    num_processes: int
    process_id: int
    job_addresses: tuple

    @property
    def coordinator(self):
        """Process 0's `host:port`, where the others connect."""
        return self.job_addresses[0]


def resolve_processes(num_processes=None, process_id=None, job_addresses=None):
    """The processes of a run from arguments or Keras' environment variables.

    Each argument left `None` is read from `KERAS_DISTRIBUTION_NUM_PROCESSES`,
    `KERAS_DISTRIBUTION_PROCESS_ID` or `KERAS_DISTRIBUTION_JOB_ADDRESSES`
    (comma-separated `host:port`; the first is process 0, the coordinator),
    the variables `keras.distribution.initialize` reads, so any launcher
    that sets them works (SLURM, Kubernetes, a shell loop). Touches no device.

    Args:
        num_processes: processes in the run, >= 1.
        process_id: this process, 0 to `num_processes - 1`.
        job_addresses: comma-separated `host:port` of every process, or of
            the coordinator alone.

    Returns:
        `Processes`, or None for a single-process run (nothing given, or one
        process).

    Raises:
        ValueError: a missing or malformed setting, a process id out of
            range, an address count different from the process count, or
            several processes on a backend other than JAX (TensorFlow's
            `MultiWorkerMirroredStrategy` does not train with Keras 3.15, see
            `MULTI_WORKER_MIRRORED_IS_BROKEN`; PyTorch has no Keras
            distribution). A `TF_CONFIG` naming a cluster on TensorFlow is
            refused the same way.

    Examples:
        >>> resolve_processes(2, 1, "10.0.0.1:1234,10.0.0.2:1234")
        Processes(num_processes=2, process_id=1, job_addresses=('10.0.0.1:1234', '10.0.0.2:1234'))
    """
    if keras.backend.backend() == "tensorflow" and _tf_config_names_a_cluster():
        raise ValueError(
            f"TF_CONFIG names a cluster of workers. {MULTI_WORKER_MIRRORED_IS_BROKEN}")
    given = {"num_processes": num_processes, "process_id": process_id,
             "job_addresses": job_addresses}
    for name, variable in ENVIRONMENT.items():
        if given[name] is None and os.environ.get(variable):
            given[name] = os.environ[variable]
    if all(value is None for value in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            "A run over several processes needs --num-processes, --process-id and "
            f"--job-addresses (or {', '.join(ENVIRONMENT.values())}). Missing: "
            f"{', '.join(missing)}"
        )
    count = _integer("num_processes", given["num_processes"])
    index = _integer("process_id", given["process_id"])
    if count < 1:
        raise ValueError(f"`num_processes` must be >= 1. Received: num_processes={count}")
    if not 0 <= index < count:
        raise ValueError(
            f"`process_id` must be in [0, {count - 1}] for {count} processes. "
            f"Received: process_id={index}"
        )
    addresses = tuple(address.strip() for address in str(given["job_addresses"]).split(","))
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                "Each job address must be host:port. Received: "
                f"job_addresses={given['job_addresses']!r}"
            )
    if len(addresses) not in (1, count):
        raise ValueError(
            f"{len(addresses)} job addresses for {count} processes: give one per process "
            "(the first is process 0, the coordinator) or the coordinator's alone. "
            f"Received: job_addresses={given['job_addresses']!r}"
        )
    if count == 1:
        return None
    if keras.backend.backend() == "tensorflow":
        raise ValueError(MULTI_WORKER_MIRRORED_IS_BROKEN)
    if keras.backend.backend() != "jax":
        raise ValueError(f"{TORCH_HAS_NO_DISTRIBUTION} Train over several processes with "
                         "--backend jax.")
    return Processes(count, index, addresses)


def _integer(name, value):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}") from None


def _tf_config_names_a_cluster():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        return False
    return sum(len(tasks) for tasks in cluster.values()) > 1


def initialize_processes(processes, timeout=JOIN_TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT):
    """Joins this process to the run of `processes` (call before any JAX work).

    Does what `keras.distribution.initialize` does (the first job address is
    the coordinator; the processes agree a random seed), but calls
    `jax.distributed.initialize` itself to pass the timeouts Keras does not
    pass, and leaves the global random seeds alone.

    - A process waits at most `timeout` seconds for the others to join;
      then JAX ends it ("Deadline Exceeded").
    - When a process stops sending heartbeats for `heartbeat_timeout`
      seconds (killed, crashed, its machine gone), JAX ends the others
      ("Terminating process because the JAX distributed service detected
      fatal errors", after "heartbeat timeout" or "The tasks have
      crashed") instead of letting them wait in a collective forever.
    - A process that ends with an error while the others still train waits
      as long at most for them at JAX's shutdown, which then ends them the
      same way.

    JAX ends those processes from C++ with SIGABRT, not with a Python
    exception: a shell sees exit status 134. The default timeouts are JAX's.

    Args:
        processes: a `Processes` from `resolve_processes`.
        timeout: seconds to wait for every process to join.
        heartbeat_timeout: seconds of silence after which a process counts
            as dead.

    Returns:
        A random seed drawn by process 0, the same on every process. Every
        process must build the model from the same seed, or each would
        start from other weights: pass it (or a seed of your own) to
        `keras.utils.set_random_seed` before building the model.
        (`keras.distribution.initialize` sets it itself, which also sets
        TensorFlow's global seed and so changes the order of seeded
        `tf.data` shuffles built later; `keras_alexnet.training.train`
        records its seed in `run.json`, and its input pipeline must not
        depend on how the processes were started.)

    Examples:
        >>> processes = resolve_processes()   # from KERAS_DISTRIBUTION_* variables
        >>> if processes is not None:
        ...     keras.utils.set_random_seed(initialize_processes(processes))
    """
    import jax

    # JAX aborts the process, with pages of C++ stack, on a timeout below 1.
    check_positive_int("timeout", timeout)
    check_positive_int("heartbeat_timeout", heartbeat_timeout)
    jax.distributed.initialize(
        coordinator_address=processes.coordinator,
        num_processes=processes.num_processes,
        process_id=processes.process_id,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=heartbeat_timeout,
    )
    return shared_seed()


def process_index():
    """This process's index in a run over several processes (JAX), else 0."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def process_count():
    """The number of processes of the run (JAX), else 1."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def shared_seed():
    """A fresh random seed drawn by process 0, the same on every process.

    A collective: in a run over several processes every process must call it.
    """
    import numpy as np

    seed = np.random.default_rng().integers(2**31 - 1)
    if process_count() > 1:
        from jax.experimental import multihost_utils

        seed = multihost_utils.broadcast_one_to_all(seed)
    return int(seed)


def _exchange(value):
    """`value` (JSON) of every process, in process order.

    A collective: every process must call it, as often as the others.
    """
    if process_count() == 1:
        return [value]
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(data)]))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:length])) for row, length in zip(rows, lengths.ravel())]


@contextlib.contextmanager
def start_together():
    """Runs a block of checks on every process: all go on, or all raise.

    In a run over several processes, a check that fails on one process
    (its output folder, its data, its arguments) must stop every process
    before the first collective, or the others would wait in it until
    JAX's timeouts. At the end of the block the processes exchange their
    outcomes: the one that failed raises its own error, and every other
    raises a ValueError naming the process and its error. The block
    yields a dict: what it puts there (the recipe, the data, the
    checkpoint it resumes from) must be the same on every process, or all
    raise a ValueError naming what differs from process 0. In a run of one
    process this does nothing more than run the block.

    Examples:
        >>> with start_together() as agreed:
        ...     check_my_folder()
        ...     agreed["recipe"] = dataclasses.asdict(recipe)
    """
    agreed = {}
    with _all_or_none("Another process of this run could not start, so none does",
                      ValueError, agreed) as answers:
        yield agreed
    reference = answers[0]
    for index, answer in enumerate(answers[1:], start=1):
        differences = [f"{key}: {mine!r} (process 0) vs {theirs!r}"
                       for key, mine, theirs in changed_leaves(reference, answer)]
        if differences:
            raise ValueError(
                f"Process {index} was started with other settings than process 0 "
                f"(give every process the same arguments and data): {'; '.join(differences)}"
            )


@contextlib.contextmanager
def _all_or_none(stopped, error_type, value=None):
    """Runs a block on every process: all go on, or all raise (a collective at its end).

    The process whose block raised raises its own error; every other raises
    `error_type`: `stopped`, then which process stopped with what error.
    Otherwise the block yields a list that holds every process's `value`
    (JSON), in process order, once the block is done.
    """
    answers = []
    try:
        yield answers
    except Exception as error:
        _exchange({"error": f"{type(error).__name__}: {error}"})
        raise
    exchanged = _exchange({"value": value})
    failed = [f"process {index} stopped: {answer['error']}"
              for index, answer in enumerate(exchanged) if "error" in answer]
    if failed:
        raise error_type(f"{stopped}: {'; '.join(failed)}")
    answers.extend(answer["value"] for answer in exchanged)


class LostProcessError(RuntimeError):
    """Training stopped on this process of a run over several processes.

    Most often another process died: the collective this one waited in
    failed. JAX itself ends a process that waits in a collective when
    another stops sending heartbeats (see `initialize_processes`).
    """


def is_collective_failure(error):
    """Whether `error` is a failed JAX computation, as when a collective loses a process.

    Our own errors (a bad checkpoint, process 0's `ModelWriter` error that
    every process raises) are not: they stop the run as themselves.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(error, jax.errors.JaxRuntimeError)


def model_outputs(model, images):
    """`model(images, training=False)` as NumPy, under any `keras.distribution`.

    A layout that splits the batch over devices (the hybrid model-parallel
    mesh's `"<layer>/output"` entries) needs batches that divide over them:
    a batch that does not (the last of a dataset) is padded with zeros for
    the call, and the padding's outputs dropped. Outputs split over several
    processes are gathered from all of them: a collective then, which every
    process must call.

    Args:
        model: a Keras model.
        images: a NumPy batch.
    """
    import numpy as np

    rows = len(images)
    distribution = keras.distribution.distribution()
    padding = -rows % _batch_and_model_shape(distribution)[0] if distribution else 0
    if padding:
        images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    outputs = model(images, training=False)
    if process_count() > 1 and not (outputs.is_fully_addressable or outputs.is_fully_replicated):
        from jax.experimental import multihost_utils

        outputs = multihost_utils.process_allgather(outputs, tiled=True)
    return keras.ops.convert_to_numpy(outputs)[:rows]


def wait_for_every_process(name):
    """Returns when every process of the run has called it with `name` (a barrier)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
