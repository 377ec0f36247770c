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

One concept a module: `strategies.py` (which engine runs a training),
`model_parallel.py` (the paper's layout), `collectives.py` (where a step
communicates), `processes.py` (many processes: start-up, agreement, losses)
and `writer.py` (saving a model spread over processes).
"""

# The names this module has always had, from the modules that now define them.
from keras_alexnet.distribute.collectives import COLLECTIVES, Collective, collectives
from keras_alexnet.distribute.model_parallel import (
    CONVOLUTIONS,
    FULLY_CONNECTED,
    GATHERED,
    PAPER_MODEL_PARALLEL,
    SPLIT_FEATURE_MAPS,
    SPLIT_UNITS,
    alexnet_layout_map,
    model_parallel_distribution,
)
from keras_alexnet.distribute.processes import (
    ENVIRONMENT,
    HEARTBEAT_TIMEOUT,
    JOIN_TIMEOUT,
    initialize_processes,
    is_collective_failure,
    LostProcessError,
    model_outputs,
    process_count,
    process_index,
    Processes,
    resolve_processes,
    shared_seed,
    start_together,
    wait_for_every_process,
)
from keras_alexnet.distribute.strategies import (
    DISTRIBUTIONS,
    MULTI_WORKER_MIRRORED_IS_BROKEN,
    TORCH_HAS_NO_DISTRIBUTION,
    check_distribution,
    distribution_scope,
    split_cpu_for_tensorflow,
    _check_divisible,
)
from keras_alexnet.distribute.writer import (
    ModelWriter,
    _local_copy,
    _saved_variable_names,
    _variables_to_save,
)
