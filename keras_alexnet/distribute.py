"""Distribution in one place: which engine runs a training, and how AlexNet is split.

    from keras_alexnet import distribute
    scope, replicas = distribute.distribution_scope("model-parallel", batch_size=128)
    with scope:
        model = training.build_model(recipe, num_classes)

- `distribution_scope`: `mirrored` (`tf.distribute.MirroredStrategy`,
  TensorFlow), `data-parallel` (`keras.distribution.DataParallel`, JAX) or
  `model-parallel` (`model_parallel_distribution`, JAX: the paper's two-GPU
  layout, with the remaining devices data-parallel).
- `collectives`: the cross-device communication in one compiled training
  step, per layer, so the layout can be compared with the paper (§3.2).
- `resolve_processes` and `initialize_processes`: one run over several
  processes or machines (JAX), before any JAX computation; then
  `start_together` (every process passes its checks, with the same
  settings, or all stop), `ModelWriter` (process 0 writes what all train),
  `model_outputs` (a model's outputs under any layout) and
  `wait_for_every_process`.

Reading the data over several processes: each process gets the same
`tf.data` pipeline of *global* batches and Keras' own auto-sharding
(`Distribution.distribute_dataset`, on by default, applied by `fit`) cuts
every global batch into one slice per process (`rebatch` then `shard`). So
every global batch is exactly the batch one process would train on, with
the same shuffle and the same per-example augmentation seeds: a run over N
processes trains the same weights as one process with N devices, and a
resumed run continues the same way. Sharding the files with
`tf.data.Dataset.shard` before decoding would spare each process decoding
the other processes' images, but the global batches would then depend on
the process count, and with one seed every process would draw the same
random crops, flips and lighting for its k-th image. The price of
auto-sharding is that each process decodes and augments the whole global
batch; the input pipeline must keep up with the whole run, not one process.
"""

import contextlib
import dataclasses
import json
import os
import re

import keras

from keras_alexnet._validation import check_positive_int
from keras_alexnet.models import AlexNetModel

DISTRIBUTIONS = ("none", "mirrored", "data-parallel", "model-parallel")
PAPER_MODEL_PARALLEL = 2
# Layers whose kernels and biases are split on their outputs (the paper's
# "half of the kernels on each GPU"); the activations that stay split are
# the outputs of these layers and of the layers between them.
CONVOLUTIONS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FULLY_CONNECTED = ("fc6", "fc7", "fc8")
SPLIT_FEATURE_MAPS = ("conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4",
                      "conv5", "pool5")
SPLIT_UNITS = ("fc6", "drop6", "fc7", "drop7")
# fc6 sees all of pool5's maps, as in the paper: gathered once, at the flatten.
GATHERED = ("flatten",)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute",
               "all-to-all")
TORCH_HAS_NO_DISTRIBUTION = (
    "Keras 3.15 has no distribution API for the PyTorch backend (its main branch adds "
    "DataParallel through torch DDP for the next release, and ModelParallel through DTensor "
    "after it: keras-team/keras#23418)."
)
MULTI_WORKER_MIRRORED_IS_BROKEN = (
    "Training over several processes on TensorFlow would be "
    "tf.distribute.MultiWorkerMirroredStrategy, and Keras 3.15's model.fit fails with it on "
    "TensorFlow 2.21 before the first step (ValueError: Attempt to convert a value "
    "(PerReplica...); keras-team/keras#20585). Use --backend jax --distribute data-parallel "
    "(or model-parallel): keras.distribution trains over several processes on JAX."
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


def split_cpu_for_tensorflow(devices):
    """Splits the CPU into `devices` logical devices (before TensorFlow starts)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def check_distribution(distribute):
    """Raises ValueError unless the current backend supports `distribute`.

    Returns whether the run is distributed at all.
    """
    backend = keras.backend.backend()
    if distribute not in DISTRIBUTIONS:
        raise ValueError(f"`distribute` must be one of {DISTRIBUTIONS}. Received: {distribute!r}")
    if distribute == "none":
        return False
    if backend == "torch":
        raise ValueError(f"{TORCH_HAS_NO_DISTRIBUTION} Use --backend tensorflow --distribute "
                         "mirrored or --backend jax --distribute data-parallel (or "
                         "model-parallel).")
    if distribute == "mirrored" and backend != "tensorflow":
        raise ValueError(
            "--distribute mirrored is tf.distribute.MirroredStrategy and needs "
            f"--backend tensorflow (this run uses {backend!r}); on JAX use data-parallel."
        )
    if distribute == "data-parallel" and backend != "jax":
        raise ValueError(
            "--distribute data-parallel is keras.distribution.DataParallel and needs "
            f"--backend jax (this run uses {backend!r}); on TensorFlow use mirrored."
        )
    if distribute == "model-parallel" and backend != "jax":
        raise ValueError(
            "--distribute model-parallel is keras.distribution.ModelParallel and needs "
            f"--backend jax (this run uses {backend!r}); Keras has no model parallelism "
            "for TensorFlow."
        )
    return True


def distribution_scope(distribute, batch_size, model_parallel=PAPER_MODEL_PARALLEL,
                       per_process_data=False):
    """A context to build and compile the model in, and the number of replicas.

    `mirrored`: `tf.distribute.MirroredStrategy` over every GPU (or, with no
    GPU, every logical CPU device); `data-parallel`:
    `keras.distribution.DataParallel` over every JAX device;
    `model-parallel`: `model_parallel_distribution(model_parallel)`, whose
    replicas are the devices of its batch axis.

    Over several processes Keras gives each process its part of every
    global batch of the dataset `fit` gets (`auto_shard_dataset`). With
    `per_process_data=True` each process's dataset already yields only its
    own part (`batch_size / processes` examples: a tf.data service job the
    processes share, `data_service.EpochJobs`), and Keras takes it as it
    is. Then each process must hold whole model replicas: the processes of
    a replica split over several would need the same batches, which the
    service does not send. That is a ValueError.
    """
    if not check_distribution(distribute):
        return contextlib.nullcontext(), 1
    if distribute == "mirrored":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
        _check_divisible(batch_size, len(devices))
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy.scope(), strategy.num_replicas_in_sync
    if distribute == "model-parallel":
        distribution = model_parallel_distribution(model_parallel)
        replicas = distribution.device_mesh.shape[0]
    else:
        devices = keras.distribution.list_devices()
        replicas = len(devices)
        distribution = keras.distribution.DataParallel(devices=devices)
    _check_divisible(batch_size, replicas)
    if per_process_data:
        _check_whole_replicas_per_process(distribution.device_mesh.shape[-1]
                                          if distribute == "model-parallel" else 1)
        distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    return contextlib.nullcontext(), replicas


def _check_whole_replicas_per_process(model_parallel):
    import jax

    if jax.local_device_count() % model_parallel:
        raise ValueError(
            f"Each process reads its own batches from the tf.data service, so each must "
            f"hold whole model replicas of {model_parallel} devices; this process has "
            f"{jax.local_device_count()}. Give every process a multiple of {model_parallel} "
            "devices (--cpu-devices on CPUs), or train over several processes without the "
            "service (each process of a replica then reads the same part of --data).")


def _check_divisible(batch_size, devices):
    if batch_size % devices:
        raise ValueError(
            f"The global batch size {batch_size} does not divide evenly over "
            f"{devices} devices; use a multiple of {devices}."
        )


# ------------------------------------------------------- model parallelism


def model_parallel_distribution(model_parallel=PAPER_MODEL_PARALLEL, devices=None):
    """The paper's two-GPU layout as a `keras.distribution.ModelParallel`.

    Krizhevsky et al. (§3.2, Figure 2) put half of every layer's kernels on
    each of two GPUs. Here a `DeviceMesh` with axes `("batch", "model")` has
    `model_parallel` devices on the model axis and the rest of `devices`
    (every device of every process by default) on the batch axis, so
    `model_parallel=2` on 8 devices trains 4 data-parallel replicas of the
    two-device model. The layout (`alexnet_layout_map`) splits conv1..conv5
    and fc6..fc8 on their outputs and keeps the feature maps between them
    split; conv2, conv4 and conv5 split in whole groups, so each device
    convolves its own group, as each of the paper's GPUs did.

    Every split width must divide by `model_parallel`: with the paper's
    widths (96, 256, 384, 4096) that is 1, 2, 4, 8, 16 or 32, and fc8's
    `classes` too. A width that does not divide is a ValueError naming the
    layer when the model is built.

    Args:
        model_parallel: devices per model replica (the model axis), >= 1.
        devices: the devices to use; `keras.distribution.list_devices()` by
            default.

    Returns:
        A `keras.distribution.ModelParallel`. Set it
        (`keras.distribution.set_distribution`) before building the model,
        and keep it set for `fit`.

    Examples:
        >>> keras.distribution.set_distribution(model_parallel_distribution(2))
        >>> model = keras_alexnet.AlexNet(classes=10)   # each device holds half of it
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Model parallelism is keras.distribution.ModelParallel, which Keras 3 "
            f"implements for the JAX backend only. Received: backend="
            f"{keras.backend.backend()!r}"
        )
    check_positive_int("model_parallel", model_parallel)
    devices = list(devices or keras.distribution.list_devices())
    if len(devices) % model_parallel:
        raise ValueError(
            f"The model axis of {model_parallel} devices does not divide the "
            f"{len(devices)} devices into whole model replicas. Received: "
            f"model_parallel={model_parallel}, devices={len(devices)}"
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_parallel, model_parallel), ("batch", "model"), devices
    )
    return _WidthCheckingModelParallel(layout_map=alexnet_layout_map(mesh),
                                       batch_dim_name="batch")


def alexnet_layout_map(device_mesh, model_axis="model", batch_axis="batch"):
    """A `keras.distribution.LayoutMap` splitting AlexNet over `model_axis`.

    Kernels and biases of conv1..conv5 and fc6..fc8 are split on their
    outputs: a convolution kernel `(kh, kw, in / groups, filters)` as
    `(None, None, None, model)`, so with two devices and two groups each
    device holds one group's filters. The outputs of the convolutions, LRN
    and pooling layers stay split on their channels and those of fc6, fc7
    and their dropouts on their units (`"<layer>/output"` entries); the
    flattened pool5 is whole on every device (fc6 sees all of it). Keys
    match the layer names of `keras_alexnet.AlexNet`, also inside an outer
    model.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with both axes.
        model_axis: the mesh axis the layers are split over.
        batch_axis: the mesh axis the batch is split over.
    """
    layout_map = keras.distribution.LayoutMap(device_mesh)

    def add(path, axes):
        layout_map[rf"(.*/)?{path}"] = axes

    for name in CONVOLUTIONS:
        add(f"{name}/kernel", (None, None, None, model_axis))
        add(f"{name}/bias", (model_axis,))
    for name in FULLY_CONNECTED:
        add(f"{name}/kernel", (None, model_axis))
        add(f"{name}/bias", (model_axis,))
    for name in SPLIT_FEATURE_MAPS:
        add(f"{name}/output", (batch_axis, None, None, model_axis))
    for name in SPLIT_UNITS:
        add(f"{name}/output", (batch_axis, model_axis))
    for name in GATHERED:
        add(f"{name}/output", (batch_axis, None))
    return layout_map


class _WidthCheckingModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that names the layer whose width does not split evenly
    (JAX would otherwise fail deep inside variable creation)."""

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        mesh = self.device_mesh
        for size, axis in zip(variable.shape, layout.axes):
            if axis is None:
                continue
            devices = mesh.shape[mesh.axis_names.index(axis)]
            if size % devices:
                raise ValueError(
                    f"{variable.path} has {size} outputs, which do not split evenly over "
                    f"the {devices} devices of the {axis!r} axis; choose a model-axis size "
                    f"that divides every layer's width. Received: shape={variable.shape}"
                )
        return layout


# ---------------------------------------------------------- communication


@dataclasses.dataclass(frozen=True)
class Collective:
    """One cross-device collective in a compiled training step.

    Attributes:
        kind: one of `COLLECTIVES`.
        layers: the model layers whose values it carries (several when XLA
            sends several tensors in one collective), `"loss"`, or `"other"`
            (metrics, weight decay).
        backward: whether it belongs to the gradient computation.
        axis: the mesh axis it communicates over: `"model"`, `"batch"`,
            `"batch and model"`, or `"none"` (every group is one device).
        shape: its result's HLO shape.
    """

    kind: str
    layers: tuple
    backward: bool
    axis: str
    shape: str


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<shape>\(.*?\)|\S+)\s+"
                          r"(?P<opcode>[a-z-]+)\([^)]*\)(?P<attributes>.*)$", re.MULTILINE)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def collectives(model, images, labels):
    """The cross-device collectives of one compiled training step of `model`.

    Compiles (does not run) `model.train_step` on the batch `images`,
    `labels` under the current `keras.distribution`, as `fit` does, and reads
    the collectives XLA placed in the optimised program: all-gather,
    all-reduce, reduce-scatter, collective-permute and all-to-all. Each is
    attributed to the layers whose tensors it carries, from the `op_name`
    metadata XLA keeps (Keras names JAX scopes after its layers; gradients
    show as `transpose(...)`), and to the mesh axis its device groups span.

    The model's weights and metrics are left as they were; its optimizer
    is built, as `fit` would.

    Args:
        model: a compiled Keras model built under the distribution (JAX).
        images, labels: one global batch (NumPy arrays).

    Returns:
        A list of `Collective`, in program order.

    Examples:
        >>> with model_parallel_distribution(2).scope():
        ...     model = training.build_model(recipe, num_classes=4)
        ...     found = collectives(model, images, labels)
        >>> sorted({c.layers[0] for c in found if not c.backward})
        ['conv3', 'fc6', 'fc7', 'fc8', 'loss', 'lrn1', 'lrn2', 'other']
    """
    import jax

    if keras.backend.backend() != "jax":
        raise ValueError("`collectives` reads XLA programs compiled by the JAX backend. "
                         f"Received: backend={keras.backend.backend()!r}")
    distribution = keras.distribution.distribution()
    # Keras builds the loss, the metrics and the optimizer at the first
    # step; build them the same way here without training. The stateless
    # scope (which must know the model's values) drops the metric updates,
    # so this batch is not counted in them.
    with keras.StatelessScope(state_mapping=[(v, v.value) for v in model.variables]):
        predictions = model(images)
        model.compute_loss(images, labels, predictions)
        model.compute_metrics(images, labels, predictions, sample_weight=None)
    model.optimizer.build(model.trainable_variables)
    state = tuple(
        [variable.value for variable in variables]
        for variables in (model.trainable_variables, model.non_trainable_variables,
                          model.optimizer.variables, model.metrics_variables)
    )
    data = (images, labels)
    mesh_shape = (1, 1)
    if distribution is not None:
        data = tuple(
            jax.device_put(array, distribution.get_data_layout(array.shape).backend_layout)
            for array in data
        )
        mesh_shape = _batch_and_model_shape(distribution)
    # As Keras' own train function: the new state keeps the old one's layout.
    step = jax.jit(model.train_step,
                   out_shardings=(None, jax.tree.map(lambda array: array.sharding, state)))
    program = step.lower(state, data).compile().as_text()
    return _read_collectives(program, {layer.name for layer in model.layers}, mesh_shape)


def _batch_and_model_shape(distribution):
    """The mesh as (batch devices, model devices); other axes count as model."""
    mesh = distribution.device_mesh
    batch = mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)]
    return batch, mesh.devices.size // batch


def _read_collectives(program, known_layers, mesh_shape):
    found = []
    for instruction in _INSTRUCTION.finditer(program):
        kind = instruction["opcode"].removesuffix("-start")
        if kind not in COLLECTIVES:
            continue
        op_name = _OP_NAME.search(instruction["attributes"])
        op_name = op_name[1] if op_name else ""
        # A collective carrying several tensors lists their ops, ":"-separated.
        layers = tuple(dict.fromkeys(_layer_of(part, known_layers)
                                     for part in op_name.split(":")))
        found.append(Collective(kind, layers, "transpose(" in op_name,
                                _axis_of(instruction["attributes"], mesh_shape),
                                instruction["shape"]))
    return found


def _layer_of(op_name, known_layers):
    scopes = re.split(r"[/()]", op_name)
    for scope in scopes:
        if scope in known_layers:
            return scope
    return "loss" if "compile_loss" in scopes else "other"


def _axis_of(attributes, mesh_shape):
    """Which axis of a (batch, model) mesh a collective's device groups span."""
    import numpy as np

    groups = _device_groups(attributes, int(np.prod(mesh_shape)))
    devices = np.arange(int(np.prod(mesh_shape))).reshape(mesh_shape)
    if all(len(group) == 1 for group in groups):
        return "none"
    for axis, lines in (("model", devices), ("batch", devices.T)):
        if all(any(set(group) <= set(line) for line in lines) for group in groups):
            return axis
    return "batch and model"


def _device_groups(attributes, device_count):
    """The device groups of an HLO collective, from any of XLA's notations."""
    import numpy as np

    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
    if pairs:
        return [[int(d) for d in pair.split(",")] for pair in re.findall(r"\{([\d,]+)", pairs[1])]
    explicit = re.search(r"replica_groups=\{(\{.*?\})?\}", attributes)
    if explicit:
        groups = [[int(d) for d in group.split(",")]
                  for group in re.findall(r"\{([\d,]+)\}", explicit[0])]
        return groups or [list(range(device_count))]
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attributes)
    if iota:
        shape, dims = ([int(d) for d in text.split(",")] for text in iota.groups()[:2])
        devices = np.arange(np.prod(dims)).reshape(dims)
        if iota[3]:
            devices = devices.transpose([int(d) for d in iota[3].split(",")])
        return devices.reshape(shape).tolist()
    mesh = re.search(r"replica_groups=mesh\[(.*?)\](?:, device_ids=\((.*?)\))?\s*\{(.*?)\}",
                     attributes)
    if mesh:
        axes = re.findall(r"'(\w+)'=(\d+)", mesh[1])
        names = [name for name, _ in axes]
        grouped = [names.index(name) for name in re.findall(r"'(\w+)'", mesh[3])]
        devices = np.arange(device_count)
        order = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", mesh[2] or "")
        if order:  # the devices of the mesh in iota notation
            devices = devices.reshape([int(d) for d in order[1].split(",")])
            if order[2]:
                devices = devices.transpose([int(d) for d in order[2].split(",")])
        elif mesh[2]:
            devices = np.array([int(d) for d in mesh[2].split(",")])
        devices = devices.reshape([int(size) for _, size in axes])
        kept = [axis for axis in range(len(axes)) if axis not in grouped]
        size = int(np.prod([int(axes[axis][1]) for axis in grouped]))
        return devices.transpose(kept + grouped).reshape(-1, size).tolist()
    raise ValueError(f"Unknown device groups in the HLO collective: {attributes[:200]}")


# ------------------------------------------------------ many processes


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
        differences = _differences(reference, answer)
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


def _differences(reference, other, prefix=""):
    """`"key: reference value vs other value"` for every leaf that differs."""
    differences = []
    for key in sorted(set(reference) | set(other)):
        mine, theirs = reference.get(key), other.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            differences += _differences(mine, theirs, f"{prefix}{key}.")
        elif mine != theirs:
            differences.append(f"{prefix}{key}: {mine!r} (process 0) vs {theirs!r}")
    return differences


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


class ModelWriter:
    """Lets process 0 alone write a model that every process of a run trains.

    `with writer.latest() as model:` gives the model to save, export or
    checkpoint. In a run of one process it is the model itself. Over
    several processes, every process enters `latest()` at the same points
    of the run: process 0 gets a copy of the model on its own devices (built
    once) holding the current value of every variable of the model and its
    optimizer (random generator states included), and the others get None.
    Values split over several processes (model parallelism across
    processes) are gathered from all of them, which is why every process
    must enter it; values every device holds whole (data parallelism) are
    read locally. Inside, process 0 runs with no `keras.distribution` set,
    so that Keras' saving, which creates variables of its own, and the copy
    itself stay on this process; then it writes with Keras' own saving,
    exactly as a run of one process does. If that fails on process 0 (the
    copy, or the writing inside the block), every process raises at the end
    of the block: process 0 its error, the others a RuntimeError naming it.

    Args:
        model: the compiled model being trained.

    Examples:
        >>> writer = ModelWriter(model)
        >>> with writer.latest() as saved:   # on every process
        ...     if saved is not None:          # process 0
        ...         saved.save("final.keras")
    """

    def __init__(self, model):
        self.model = model
        self._copy = None

    @contextlib.contextmanager
    def latest(self):
        if process_count() == 1:
            yield self.model
            return
        import numpy as np
        from jax.experimental import multihost_utils

        values = [variable.value for variable in _variables_to_save(self.model)]
        split = [index for index, value in enumerate(values)
                 if not (value.is_fully_addressable or value.is_fully_replicated)]
        if split:
            gathered = multihost_utils.process_allgather([values[index] for index in split],
                                                         tiled=True)
            for index, value in zip(split, gathered):
                values[index] = value
        # An error of process 0's (its disk full, say) stops every process
        # with that error, not the others later as if process 0 were lost.
        with _all_or_none(f"Process 0 of {process_count()} could not write the model, so "
                          "every process stops", RuntimeError):
            if process_index() != 0:
                yield None
                return
            with _no_distribution():
                if self._copy is None:
                    self._copy = _local_copy(self.model)
                for target, value in zip(_variables_to_save(self._copy), values):
                    target.assign(np.asarray(value))
                yield self._copy


def _variables_to_save(model):
    return list(model.variables) + list(model.optimizer.variables if model.optimizer else [])


@contextlib.contextmanager
def _no_distribution():
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def _local_copy(model):
    """A compiled copy of `model` with variables of its own (call with no distribution set)."""
    copy = keras.models.clone_model(model)
    if isinstance(model, AlexNetModel):  # clone_model rebuilds the graph, not these
        copy.pixel_mean, copy.pixel_std = model.pixel_mean, model.pixel_std
    if model.compiled:
        copy.compile_from_config(model.get_compile_config())
    if copy.optimizer is not None:
        copy.optimizer.build(copy.trainable_variables)
    names, copied = _saved_variable_names(model), _saved_variable_names(copy)
    if names != copied:
        raise RuntimeError(f"The copy of {model.name} to save has other variables: "
                           f"{sorted(set(names) ^ set(copied))}")
    return copy


def _saved_variable_names(model):
    """`_variables_to_save(model)` named as a clone of `model` names them too.

    A variable's own `path` will not do: a seed generator (every Dropout
    layer has one) takes a process-wide number at its creation
    (`seed_generator_3/seed_generator_state`), so a clone's differ from the
    model's. Here a model variable is named by the layers that own it and
    its own name (`alexnet/drop6/seed_generator_state`), and an optimizer
    variable (whose scope is numbered so too, `sgd_1`) by its own name,
    which names the model variable it belongs to (`conv1_kernel_momentum`).
    """
    owners = {}

    def visit(layer, prefix):
        # Outer layers first: the innermost layer holding a variable names it.
        for variable in layer.variables:
            owners[id(variable)] = f"{prefix}/{variable.name}"
        for sublayer in layer._flatten_layers(include_self=False, recursive=False):
            visit(sublayer, f"{prefix}/{sublayer.name}")

    visit(model, model.name)
    optimizer = model.optimizer.variables if model.optimizer else []
    return ([owners[id(variable)] for variable in model.variables]
            + [f"optimizer/{variable.name}" for variable in optimizer])
