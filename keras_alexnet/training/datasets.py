"""The training and validation datasets of a recipe."""

from keras_alexnet.data_service import EpochJobs, check_dispatcher
from keras_alexnet.presets import EvalPreset, TrainPreset, square_bytes

# Decoded training images are kept in memory for the whole run when their
# central squares (resize_size**2 * 3 bytes each) fit in this many bytes.
CACHE_BYTES = 2 * 1024**3


def make_datasets(recipe, source, skipped_log=None, first_epoch=0, normalize=True,
                  data_service=None):
    """The training and validation datasets of a recipe, and the steps per epoch.

    `first_epoch`: the (Keras) epoch a resumed run starts at; the training
    batches then continue where the uninterrupted run's would be.
    `normalize=False` leaves pixel values in [0, 255], for a model that
    normalises its inputs itself (`takes_pixel_values`).
    `data_service`: the address of a tf.data service dispatcher
    (`"grpc://host:port"`) whose workers then make the training batches
    (`TrainPreset.epochs`), or the `data_service.EpochJobs` the processes of
    a run share: each process then receives batches of its part of
    `recipe.batch_size`. Validation stays on this machine.

    Raises ValueError when the training split holds less than one batch, or
    when `recipe.resize_size` is not the size of a prepared folder's squares
    (`source.prepared_size`): it would resize them again.

    The training data is `TrainPreset.epochs`: epoch `e` drawn from
    `(recipe.seed, e)`, so a run resumed at `first_epoch` continues as the
    uninterrupted run would. Memory: the training images are cached
    (decoded once, as central `resize_size` squares of uint8) when they fit
    in `CACHE_BYTES`, and each epoch shuffles all of them. Otherwise the
    file order is shuffled every epoch before decoding and a shuffle buffer
    of decoded squares bounded by `presets.SHUFFLE_BUFFER_BYTES` mixes
    neighbours.

    TensorFlow's global seed is cleared first (`tf.random.set_seed(None)`):
    `tf.data` shuffles seeded with a number combine it with the global seed
    (a split without a known size is shuffled so), so a previous seeded run
    in the same process (`keras.utils.set_random_seed`) would change this
    run's data. The datasets are those of a fresh process.
    """
    import tensorflow as tf

    tf.random.set_seed(None)
    count = source.counts.get("train")
    if count is not None and count < recipe.batch_size:
        raise ValueError(
            f"The training split has {count} images, fewer than one batch of "
            f"{recipe.batch_size}; use a smaller --batch-size."
        )
    if source.prepared_size not in (None, recipe.resize_size):
        raise ValueError(
            f"{source.name} holds squares of {source.prepared_size}x{source.prepared_size}, "
            f"prepared once; train it with resize_size={source.prepared_size} (train.py's "
            "default for a prepared folder): another size would resize them again. Prepare "
            f"the data again at the size you want. Received: resize_size={recipe.resize_size}"
        )
    train_preset = TrainPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size,
                               lighting_std=recipe.lighting_std, policy=recipe.policy,
                               normalize=normalize)
    eval_preset = EvalPreset(crop_size=recipe.image_size, resize_size=recipe.resize_size,
                             normalize=normalize)
    batch_size = recipe.batch_size
    if data_service is not None:
        data_service = EpochJobs.of(data_service)
        check_dispatcher(data_service.service)
        if count is None:
            raise ValueError(f"--data-service needs the size of the training split, which "
                             f"{source.name} does not give; prepare it first (--prepare DIR).")
        if batch_size % data_service.processes:
            raise ValueError(
                f"The global batch size {batch_size} does not divide over the "
                f"{data_service.processes} processes reading the tf.data service; use a "
                f"multiple of {data_service.processes}.")
        batch_size //= data_service.processes
    if count is None:  # a TFDS split without metadata: one pass per epoch
        examples = source.examples("train", shuffle=True, seed=recipe.seed,
                                   skipped_log=skipped_log)
        train = train_preset.dataset(examples, recipe.batch_size, seed=recipe.seed)
        steps = recipe.steps_per_epoch
        if steps is not None:
            train = train.repeat()
    else:
        cache = (data_service is None
                 and count * square_bytes(recipe.resize_size) <= CACHE_BYTES)
        data_epoch_batches = count // recipe.batch_size
        steps = recipe.steps_per_epoch or data_epoch_batches
        # Where the uninterrupted run would be in the stream of batches: a
        # capped --steps-per-epoch makes Keras epochs and data epochs differ.
        data_epoch, offset = divmod(first_epoch * steps, data_epoch_batches)
        train = train_preset.epochs(source, batch_size, seed=recipe.seed,
                                    first_epoch=data_epoch, cache=cache,
                                    skipped_log=skipped_log,
                                    data_service=data_service).skip(offset)
    validation = None
    if "validation" in source.counts:
        source.check_usable("validation")  # the training split's is checked by `epochs`
        validation = eval_preset.dataset(
            source.examples("validation", skipped_log=skipped_log), recipe.batch_size,
            cache=_validation_fits_in_memory(source, eval_preset))
    return train, validation, steps, eval_preset


def _validation_fits_in_memory(source, preset):
    count = source.counts.get("validation")
    # EvalPreset caches float32 crops.
    return count is not None and count * preset.crop_size**2 * 3 * 4 <= CACHE_BYTES
