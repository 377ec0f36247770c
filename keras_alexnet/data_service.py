"""The input pipeline on other machines: the tf.data service, its servers and the trainer's side.

    python -m keras_alexnet.data_service dispatcher --port 5050
    python -m keras_alexnet.data_service worker --dispatcher HOST:5050 --port 5051
    python train.py --data ~/images-256 --data-service grpc://HOST:5050

One dispatcher hands out work; each worker (one per machine, using all its
cores) reads, decodes and augments examples and sends finished batches to the
trainer, whose CPUs then only receive them. Workers read the data from their
own file system: the folder must be at the same path on every worker machine
(a shared file system, or copies).

Each epoch is its own job, sharded `distributed_epoch`: the dispatcher hands
the epoch's units (shards of a prepared folder, chunks of 64 files of an
image folder, in the order drawn from `(seed, epoch)`) to whichever worker
asks next, so every example is read once per epoch across the workers, and a
fast worker takes more. The trade-off against the other sharding policies:

- `distributed_epoch` (dynamic sharding): each example at most once per
  epoch, the load balanced dynamically, workers may join mid-epoch. What a
  worker held when it was lost is not read again: that epoch ends short.
- `"off"` (`parallel_epochs`): every worker produces the whole dataset, in
  its own order; no coordination, and a lost worker costs nothing, but an
  "epoch" of `count` examples then repeats some and misses others.
- static sharding (`FILE`, `DATA`): a fixed list of workers, each reading
  its fixed part; a restarted worker starts its part again (examples seen
  twice), and the trainer must read from co-located workers.

A lost worker: TensorFlow's client waits for it to come back at its address
(the dispatcher keeps its tasks), however long, and whether or not other
workers are alive: the dispatcher's `worker_timeout` only logs it lost.
Restarted there (same `--host` and `--port`), it continues the epoch: what it
held when it was lost, if anything, is not read again, and the trainer then
says the epoch came short. If no batch comes for `timeout` seconds, `StalledServiceWatchdog` ends the training process with a
message (a blocked read cannot be interrupted); its last checkpoint is kept,
and `train.py --resume` continues once the workers are back.

Several training processes (a run over several machines) share each epoch:
every process reads the epoch's job under one name (`EpochJobs`), so the
service hands each process its own batches, of `batch_size / processes`
examples, first come first served, and together they read each example once.
Keras then takes each process's batches as its part of the global batch
(`distribute.distribution_scope(..., per_process_data=True)`).

Undecodable files are named on the standard error of the worker that meets
them; the trainer cannot write them to its run folder. It counts the examples
each epoch delivers and says when an epoch ended short (those files, or a
lost worker).
"""

import argparse
import dataclasses
import os
import secrets
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import keras
import tensorflow as tf
from tensorflow.python.data.experimental.ops import data_service_ops

from keras_alexnet._validation import check_positive_int

# How long the dispatcher waits for a worker's heartbeat before it logs the
# worker lost. The trainer does not stop waiting then: TensorFlow's client
# keeps waiting for a lost worker's tasks to come back at its address, even
# while other workers are alive, until `StalledServiceWatchdog` ends it.
WORKER_TIMEOUT_SECONDS = 30
# How often a worker heartbeats to the dispatcher (TensorFlow's default, 30
# seconds, would let a live worker look lost).
HEARTBEAT_SECONDS = 1
# How long a trainer waits for a training batch before it gives up.
STALL_TIMEOUT_SECONDS = 600
# The exit status of a training process the watchdog ends.
EXIT_STALLED = 5
# How long a server asked to stop waits for the requests open on it.
STOP_TIMEOUT_SECONDS = 30


def parse_address(address):
    """`"grpc://host:port"` (or `"host:port"`) -> `(protocol, "host:port")`; a clear error if not."""
    parts = urlsplit(address if "://" in address else f"grpc://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path:
        raise ValueError(
            "The tf.data service address must be grpc://HOST:PORT (the dispatcher's). "
            f"Received: {address!r}"
        )
    return parts.scheme, f"{parts.hostname}:{port}"


def check_dispatcher(address, timeout=10):
    """Raises ConnectionError unless the dispatcher at `address` accepts connections.

    The tf.data client retries an unreachable dispatcher for an hour; this
    says at once that it is not there.
    """
    _, host_port = parse_address(address)
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(
            f"Cannot reach the tf.data service dispatcher at {address} ({error}). Start one "
            "there: python -m keras_alexnet.data_service dispatcher --port PORT"
        ) from None


@dataclasses.dataclass(frozen=True)
class EpochJobs:
    """The jobs on a tf.data service from which the training processes of a run read its epochs.

    Epoch `e` is the job named `f"{name}-epoch-{e}"`. Every training process
    of the run reads that job, so the service hands each one its own
    batches of the one epoch (first come, first served) and together they
    read each example once. The service never reuses a job name, so each
    training session (a run, and each `--resume` of it) needs a name no
    other session on that service had: a random one by default.

    Args:
        service: the dispatcher's address, `"grpc://host:port"`.
        name: the prefix of the job names; the same on every process of the
            run (`training.train` has process 0 draw it).
        processes: the training processes reading each epoch together.

    Examples:
        >>> jobs = EpochJobs("grpc://data1:5050", name="run-7f3a", processes=2)
        >>> preset.epochs(source, batch_size=64, data_service=jobs)  # doctest: +SKIP
    """

    service: str
    name: str = dataclasses.field(
        default_factory=lambda: f"keras-alexnet-{secrets.token_hex(8)}")
    processes: int = 1

    def __post_init__(self):
        parse_address(self.service)
        check_positive_int("processes", self.processes)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")

    @classmethod
    def of(cls, data_service):
        """`data_service` as `EpochJobs`: an address gets a fresh name and one process."""
        return data_service if isinstance(data_service, cls) else cls(data_service)


def distribute_epochs(epoch_batches, service, batch_size, examples_per_epoch, first_epoch=0):
    """Endless training batches, each epoch made by the tf.data service's workers.

    `epoch_batches(epoch)` builds one epoch's batches (on the trainer, as a
    graph; the workers run it) from a source whose first dataset is a
    `from_tensor_slices` of units (`Source.units`). Each epoch is registered
    with the dispatcher and read in its own job (`EpochJobs`) with
    `distributed_epoch` sharding, so each example is read once per epoch
    across the workers, and across the training processes sharing the job.

    Each worker ends the epoch with a partial batch; the trainer regroups
    them into full batches (`rebatch`, which passes full batches through
    untouched) and drops the epoch's last incomplete one, as the local
    pipeline does: with `steps_per_epoch = examples_per_epoch //
    batch_size` a Keras epoch is one data epoch. One training process
    counts the examples each epoch delivers, and when fewer than
    `examples_per_epoch` arrive (undecodable files, named on the workers'
    standard error, or a worker lost mid-epoch, whose units are not read
    again) it says so on its own standard error; the next epoch then starts
    a few batches early. Several processes sharing the epoch cannot count
    it: each receives an unknown share, and may start the next epoch's job
    a few batches before the others (the stream is endless, so every
    process takes as many steps as the others).

    Args:
        epoch_batches: `epoch_batches(epoch) -> tf.data.Dataset` of batches
            of `batch_size`, `epoch` a scalar int64 tensor.
        service: the dispatcher's address, `"grpc://host:port"`, or the
            `EpochJobs` of a run over several processes.
        batch_size: the batch this process receives: the global batch size
            over the processes sharing the epoch.
        examples_per_epoch: the examples an epoch should deliver.
        first_epoch: the epoch to start from.

    Returns:
        An endless `tf.data.Dataset` of batches.

    Examples:
        >>> batches = distribute_epochs(
        ...     lambda epoch: source.units("train", 0, epoch).map(crop).batch(128),
        ...     "grpc://host:5050", 128, source.counts["train"])  # doctest: +SKIP
    """
    jobs = EpochJobs.of(service)

    def one_epoch(epoch):
        # The public `distribute` takes a job name only as a Python string;
        # here the epoch is a tensor (one `flat_map` makes the endless
        # stream), and `_distribute` is that transformation without the check.
        batches = epoch_batches(epoch).apply(data_service_ops._distribute(
            "distributed_epoch", jobs.service,
            job_name=tf.strings.join([jobs.name, "-epoch-", tf.strings.as_string(epoch)])))
        if jobs.processes == 1:
            batches = _report_short_epoch(batches, epoch, examples_per_epoch)
        return batches.rebatch(batch_size, drop_remainder=True)

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)


def _report_short_epoch(batches, epoch, expected):
    """`batches` as they are; at their end, a line on stderr if fewer than `expected` examples came.

    An empty batch appended at the end (the service never sends one) marks
    where the count is checked, and is dropped again.
    """
    end = tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda spec: tf.zeros([0] + [size or 0 for size in spec.shape[1:]], spec.dtype),
        batches.element_spec))

    def batch_size(batch):
        return tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]

    def count(received, batch):
        size = batch_size(batch)
        warning = tf.cond(
            tf.logical_and(tf.equal(size, 0), received < expected),
            lambda: tf.print(
                "keras_alexnet: data epoch", epoch, "from the tf.data service delivered",
                received, "of", expected, "examples: files its workers could not decode "
                "(named in the workers' logs) or a worker lost mid-epoch (what it held is not "
                "read again).", output_stream=sys.stderr),
            tf.no_op)
        with tf.control_dependencies([warning]):
            return received + size, batch

    return (batches.concatenate(end).scan(tf.constant(0, tf.int64), count)
            .filter(lambda *batch: batch_size(batch) > 0))


class StalledServiceWatchdog(keras.callbacks.Callback):
    """Ends the process when no training batch comes from the tf.data service for `timeout` s.

    TensorFlow's client waits for a lost worker to come back at its address,
    inside a read that Python cannot interrupt: without this, a run whose
    worker died for good would wait forever. The clock runs from the start
    of each epoch (the first batch includes compilation) and from each
    batch, and stops at the end of each epoch (validation is not waiting for
    the service): put this callback first. When it expires, it prints what
    happened and what to do, then ends the process with status
    `EXIT_STALLED`: the checkpoint of the last finished epoch is kept.

    Args:
        service: the dispatcher's address (for the message).
        timeout: seconds to wait for a batch.
        log: where the message goes (it is flushed before the process ends).
    """

    def __init__(self, service, timeout=STALL_TIMEOUT_SECONDS,
                 log=lambda line: print(line, file=sys.stderr, flush=True)):
        super().__init__()
        if not timeout > 0:
            raise ValueError(f"`timeout` must be > 0. Received: timeout={timeout!r}")
        self.service = service
        self.timeout = timeout
        self.log = log
        self.deadline = None
        self.finished = threading.Event()

    def on_train_begin(self, logs=None):
        self.finished.clear()
        threading.Thread(target=self._watch, name="data-service-watchdog", daemon=True).start()

    def on_epoch_begin(self, epoch, logs=None):
        self.deadline = time.monotonic() + self.timeout

    def on_train_batch_end(self, batch, logs=None):
        self.deadline = time.monotonic() + self.timeout

    def on_epoch_end(self, epoch, logs=None):
        self.deadline = None

    def on_train_end(self, logs=None):
        self.deadline = None
        self.finished.set()

    def _watch(self):
        while not self.finished.wait(min(1.0, self.timeout / 4)):
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.log(
                    f"error: no training batch came from the tf.data service at "
                    f"{self.service} for {self.timeout:g} s: a worker was lost (the "
                    "dispatcher logs 'Lost worker'), and TensorFlow waits for it to come back "
                    "at its address. Stopping this run; the checkpoint of its last finished "
                    "epoch is kept. Restart the worker with the same --host and --port (or "
                    "restart the dispatcher and its workers), then continue with --resume.")
                os._exit(EXIT_STALLED)


# ------------------------------------------------------------------ servers


def start_dispatcher(port, worker_timeout=WORKER_TIMEOUT_SECONDS, work_dir=None):
    """Starts a tf.data service dispatcher on `port` (0: any free port) and returns it.

    Args:
        port: the port to listen on.
        worker_timeout: seconds without a heartbeat after which the
            dispatcher logs a worker lost ('Lost worker'). The trainers still
            wait for its tasks to come back at its address (see the module
            docstring); `StalledServiceWatchdog` bounds that wait.
        work_dir: a folder where the dispatcher journals its state, so a
            restarted dispatcher continues its jobs; `None`: in memory.
    """
    # The dispatcher looks for lost workers when it checks for finished jobs
    # (by default every 10 minutes): check every second.
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None,
        worker_timeout_ms=int(worker_timeout * 1000), job_gc_check_interval_ms=1000)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher, port, host=None, heartbeat=HEARTBEAT_SECONDS):
    """Starts a tf.data service worker serving `dispatcher` ("host:port") and returns it.

    Args:
        dispatcher: the dispatcher's address, `"host:port"` or
            `"grpc://host:port"`.
        port: the port to listen on (0: any free port).
        host: the name the trainer reaches this machine by (default: its
            host name); the dispatcher hands it to the trainer.
        heartbeat: seconds between the worker's heartbeats to the
            dispatcher; well below the dispatcher's worker timeout.
    """
    _, dispatcher_address = parse_address(dispatcher)
    host = host or socket.gethostname()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher_address, worker_address=f"{host}:%port%", port=port,
        heartbeat_interval_ms=int(heartbeat * 1000), data_transfer_address=f"{host}:%dts_port%")
    return tf.data.experimental.service.WorkerServer(config)


def main(argv=None):
    """`python -m keras_alexnet.data_service dispatcher|worker ...`: runs until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m keras_alexnet.data_service",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    servers = parser.add_subparsers(dest="server", required=True)
    dispatcher = servers.add_parser("dispatcher", help="hands out the work.")
    dispatcher.add_argument("--port", type=int, required=True)
    dispatcher.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT_SECONDS,
                            help="seconds without a heartbeat before a worker is given up "
                                 f"({WORKER_TIMEOUT_SECONDS}).")
    dispatcher.add_argument("--work-dir", help="journal the dispatcher's state here, so a "
                                               "restarted dispatcher continues its jobs.")
    worker = servers.add_parser("worker", help="reads, decodes and augments examples.")
    worker.add_argument("--dispatcher", required=True, help="the dispatcher, HOST:PORT.")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--host", help="the name the trainer reaches this machine by "
                                       "(default: its host name).")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in [1, 65535]. Received: {args.port}")
    try:
        if args.server == "dispatcher":
            server = start_dispatcher(args.port, args.worker_timeout, args.work_dir)
            where = (f"dispatcher listening on grpc://{socket.gethostname()}:{args.port}; "
                     f"train with --data-service grpc://{socket.gethostname()}:{args.port}")
        else:
            server = start_worker(args.dispatcher, args.port, args.host)
            where = (f"worker listening on {args.host or socket.gethostname()}:{args.port}, "
                     f"working for the dispatcher at {args.dispatcher}")
    except ValueError as error:
        parser.error(str(error))
    return serve_until_stopped(server, f"tf.data service {where}. Ctrl-C stops it.")


def serve_until_stopped(server, announcement, stop_timeout=STOP_TIMEOUT_SECONDS):
    """Prints `announcement`, serves until Ctrl-C (SIGINT) or SIGTERM, stops `server`; 0.

    The main thread wakes every second to look for the signal (not
    `server.join()`, nor one long sleep): Python runs a signal's handler only
    in the main thread, when it next runs, so a signal the kernel handed to
    one of TensorFlow's threads would wait for the sleep to end. A server
    stops once the requests open on it are answered; after `stop_timeout`
    seconds the process ends without them (their clients see a lost
    server, as when it is killed).
    """
    requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: requested.set())
    print(announcement, flush=True)
    while not requested.wait(1.0):
        pass
    stopping = threading.Thread(target=server.stop, name="data-service-stop", daemon=True)
    stopping.start()
    stopping.join(stop_timeout)
    if stopping.is_alive():
        print(f"The tf.data service server had requests still open {stop_timeout:g} s after "
              "it was asked to stop; ending it without them.", file=sys.stderr, flush=True)
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
