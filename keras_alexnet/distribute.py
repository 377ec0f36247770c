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
  processes or machines (JAX), before any JAX computation.

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
import os
import re

import keras

from keras_alexnet._validation import check_positive_int

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
        raise ValueError(
            "Keras 3 has no distribution API for the PyTorch backend: use --backend "
            "tensorflow --distribute mirrored or --backend jax --distribute data-parallel "
            "(or model-parallel)."
        )
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


def distribution_scope(distribute, batch_size, model_parallel=PAPER_MODEL_PARALLEL):
    """A context to build and compile the model in, and the number of replicas.

    `mirrored`: `tf.distribute.MirroredStrategy` over every GPU (or, with no
    GPU, every logical CPU device); `data-parallel`:
    `keras.distribution.DataParallel` over every JAX device;
    `model-parallel`: `model_parallel_distribution(model_parallel)`, whose
    replicas are the devices of its batch axis.
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
    keras.distribution.set_distribution(distribution)
    return contextlib.nullcontext(), replicas


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

    Example:

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

    Args:
        model: a compiled Keras model built under the distribution (JAX).
        images, labels: one global batch (NumPy arrays).

    Returns:
        A list of `Collective`, in program order.

    Example:

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
    # step; build them the same way here without training.
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
    that sets them works (SLURM, Kubernetes, a shell loop).

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
            several processes on a backend other than JAX.

    Example:

    >>> resolve_processes(2, 1, "10.0.0.1:1234,10.0.0.2:1234")
    Processes(num_processes=2, process_id=1, job_addresses=('10.0.0.1:1234', '10.0.0.2:1234'))
    """
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
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Training over several processes uses keras.distribution, which Keras 3.15 "
            f"implements for JAX only: use --backend jax. Received: backend="
            f"{keras.backend.backend()!r}"
        )
    return Processes(count, index, addresses)


def _integer(name, value):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}") from None


def initialize_processes(processes, timeout=300, heartbeat_timeout=100):
    """Joins this process to the run of `processes` (call before any JAX work).

    Does what `keras.distribution.initialize` does (the first job address is
    the coordinator; every process gets the same random seed), but calls
    `jax.distributed.initialize` itself to pass the timeouts Keras does not
    pass: this process waits at most `timeout` seconds for the others to
    join, and when a process stops sending heartbeats for
    `heartbeat_timeout` seconds (killed, crashed, its machine gone) JAX
    stops the others with "heartbeat timeout ... The tasks have crashed"
    instead of letting them wait in a collective forever. (JAX ends the
    process from C++, so this is not a Python exception.) The defaults are
    JAX's own.

    Args:
        processes: a `Processes` from `resolve_processes`.
        timeout: seconds to wait for every process to join.
        heartbeat_timeout: seconds of silence after which a process counts
            as dead.

    Example:

    >>> processes = resolve_processes()   # from KERAS_DISTRIBUTION_* variables
    >>> if processes is not None:
    ...     initialize_processes(processes)
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    jax.distributed.initialize(
        coordinator_address=processes.coordinator,
        num_processes=processes.num_processes,
        process_id=processes.process_id,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
    )
    # Every process initialises the variables and runs the same tf.data
    # pipeline (auto-sharding slices identical global batches), so all must
    # draw the same random numbers: process 0 picks the seed, as Keras'
    # `initialize` agrees one. A seed set later (`Recipe.seed`) replaces it.
    seed = np.random.default_rng().integers(2**31 - 1)
    keras.utils.set_random_seed(int(multihost_utils.broadcast_one_to_all(seed)))
