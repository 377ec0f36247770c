"""Saving a model whose variables are spread over several processes."""

import contextlib

import keras

from keras_alexnet.distribute.processes import _all_or_none, process_count, process_index
from keras_alexnet.models import AlexNetModel


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
