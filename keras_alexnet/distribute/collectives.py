"""Where a distributed training step communicates, read from its compiled program."""

import dataclasses
import re

import keras


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute",
               "all-to-all")


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
