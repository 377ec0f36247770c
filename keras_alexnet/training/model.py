"""The model a recipe trains: built from scratch or fine-tuned from weights, with weight decay."""

import keras

from keras_alexnet import convert
from keras_alexnet.models import AlexNet, AlexNetModel
from keras_alexnet.models.alexnet import initializers
from keras_alexnet.training.recipe import trained_variant


def apply_weight_decay(model, weight_decay):
    """Adds the paper's weight decay (an L2 penalty wd/2 ||w||^2) to every trained kernel.

    The regulariser is set on each layer (`kernel_regularizer`, so it is part
    of the layer's config and a reloaded `.keras` model keeps it) and on its
    kernel variable (where Keras collects the penalty from a built layer).
    Frozen layers (`trainable=False`) are left out: their penalty would be a
    constant added to the loss.
    """
    if weight_decay == 0:
        return
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and layer.trainable:
            regularizer = keras.regularizers.L2(weight_decay / 2)
            layer.kernel_regularizer = regularizer
            kernel.regularizer = regularizer


def takes_pixel_values(pretrained):
    """Whether a model fine-tuned from `pretrained` normalises its inputs itself.

    True when the weights file records the pixel statistics its network was
    trained with (Caffe's and torchvision's files, and `.weights.h5` files
    converted from them): the model then starts with a
    `keras.layers.Normalization` of those (`include_preprocessing=True`) and
    the presets leave the pixels in [0, 255] (`normalize=False`), so every
    image is normalised exactly once. A `.weights.h5` saved by
    `model.save_weights` after training with the presets' normalisation
    records none and is fed as such.

    Examples:
        >>> takes_pixel_values(convert.read_weights("bvlc_alexnet.caffemodel"))
        True
    """
    return pretrained is not None and pretrained.pixel_mean is not None


def fine_tuned_model(recipe, num_classes, pretrained=None):
    """The pretrained network of `recipe.fine_tune` with a new fc8 (ZFNet §5.2).

    Every layer but fc8 is built and loaded from the file as
    `AlexNet(weights=recipe.fine_tune)` would (its variant, LRN constants and
    input normalisation, see `takes_pixel_values`), at the recipe's image
    size; fc8 is a new softmax layer of `num_classes` units initialised as
    `recipe.initialization` says. The layers up to and including
    `recipe.freeze` are frozen (`trainable=False`).

    Args:
        recipe: a `Recipe` with `fine_tune` set.
        num_classes: the new dataset's number of classes.
        pretrained: the file already read (`convert.read_weights`), to read
            it only once.

    Returns:
        An uncompiled `keras.Model` named `alexnet`.

    Raises:
        ValueError: the file cannot be read or does not fit the recipe (a
            different variant, an fc6 that reads another image size), or
            `recipe.freeze` is not a layer before fc8 (the message lists them).

    Examples:
        >>> recipe = Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv5")
        >>> model = fine_tuned_model(recipe, num_classes=101)   # Caltech-101
    """
    if pretrained is None:
        pretrained = convert.read_weights(recipe.fine_tune)
    base = AlexNet(
        variant=recipe.variant,
        weights=pretrained,
        input_shape=(recipe.image_size, recipe.image_size, 3),
        dropout=recipe.dropout,
        initialization=recipe.initialization,
        include_preprocessing=takes_pixel_values(pretrained),
    )
    kernel_init, bias_init = initializers(recipe.initialization, "fc8",
                                          trained_variant(recipe.variant, pretrained))
    classifier = keras.layers.Dense(num_classes, activation="softmax",
                                    kernel_initializer=kernel_init,
                                    bias_initializer=bias_init, name="fc8")
    model = AlexNetModel(base.input, classifier(base.get_layer("fc8").input), name=base.name,
                         pixel_mean=base.pixel_mean, pixel_std=base.pixel_std)
    if recipe.freeze is not None:
        layers = model.layers[1:]  # after the input layer
        names = [layer.name for layer in layers[:-1]]  # fc8 is always trained
        if recipe.freeze not in names:
            raise ValueError(
                "`freeze` must name a layer of the fine-tuned model before fc8 (the new "
                f"classifier, always trained): {', '.join(names)}. "
                f"Received: freeze={recipe.freeze!r}"
            )
        for layer in layers[:names.index(recipe.freeze) + 1]:
            layer.trainable = False
    return model


def check_fine_tune(recipe, num_classes):
    """Reads `recipe.fine_tune` and builds `fine_tuned_model` once, to fail early.

    `train` calls it before it writes anything, so a file that does not fit
    or a wrong `freeze` leaves the output folder as it was.

    Returns:
        The `PretrainedWeights` read (pass them to `build_model`), or `None`
        without `fine_tune`.

    Examples:
        >>> recipe = Recipe(fine_tune="bvlc_alexnet.caffemodel", freeze="conv9")
        >>> check_fine_tune(recipe, num_classes=101)
        ValueError: `freeze` must name a layer of the fine-tuned model before fc8 ...
    """
    if recipe.fine_tune is None:
        return None
    pretrained = convert.read_weights(recipe.fine_tune)
    fine_tuned_model(recipe, num_classes, pretrained)
    return pretrained


def build_model(recipe, num_classes, pretrained=None):
    """The compiled AlexNet of a recipe (call inside the distribution scope).

    With `recipe.fine_tune`, `fine_tuned_model` (`pretrained`: the file
    already read by `check_fine_tune`).
    """
    if recipe.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    if recipe.fine_tune is not None:
        model = fine_tuned_model(recipe, num_classes, pretrained)
    else:
        model = AlexNet(
            variant=recipe.variant,
            input_shape=(recipe.image_size, recipe.image_size, 3),
            classes=num_classes,
            dropout=recipe.dropout,
            initialization=recipe.initialization,
        )
    apply_weight_decay(model, recipe.weight_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(recipe.learning_rate, momentum=recipe.momentum),
        loss="sparse_categorical_crossentropy",
        metrics=[
            keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )
    return model
