"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as a Keras 3 model, and ZFNet
(Zeiler and Fergus 2013), its successor, as `variant="zfnet"`.

The graph is built here; the variants' specifications and geometry are in
`architecture.py`, the checks of the arguments in `arguments.py`.
"""

import keras

from keras_alexnet import convert
from keras_alexnet.layers import GroupedConv2D, LocalResponseNormalization, MaxPooling2D
# The public names of architecture.py, arguments.py and signature.py stay
# importable from here, where they were defined before the split.
from keras_alexnet.models.architecture import (  # noqa: F401
    DEFAULT_INPUT_SHAPES,
    INITIALIZATIONS,
    LRN_CONSTANTS,
    POOLINGS,
    PREPROCESSING_LAYER_NAME,
    VARIANTS,
    _SPECS,
    conv1_padding,
    feature_map_size,
    initializers,
    minimum_input_size,
    overhang_padding,
    _padding,
)
from keras_alexnet.models.arguments import (  # noqa: F401
    _follow_weights,
    _resolve_input_shape,
    _resolve_lrn_constants,
    _validate_arguments,
    validate_architecture,
)
from keras_alexnet.models.pixel_statistics import AlexNetModel, statistics_of_weights
from keras_alexnet.models.signature import (  # noqa: F401
    OUTPUTS,
    normalizes_inputs,
    resolve_outputs,
)


def _preprocessing(mean, std):
    """`keras.layers.Normalization` of pixel values in [0, 255] by these statistics."""
    return keras.layers.Normalization(
        mean=list(mean), variance=[value**2 for value in std],
        name=PREPROCESSING_LAYER_NAME,
    )


def AlexNet(
    variant=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    dropout=0.5,
    initialization="paper",
    grouped_conv_implementation="auto",
    lrn_implementation="auto",
    lrn_constants=None,
    include_preprocessing=False,
    name="alexnet",
):
    """Instantiates AlexNet.

    Reference:
    - [ImageNet Classification with Deep Convolutional Neural Networks](
        https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks)
      (Krizhevsky, Sutskever and Hinton, NIPS 2012)
    - [One weird trick for parallelizing convolutional neural networks](
        https://arxiv.org/abs/1404.5997) (Krizhevsky 2014), the layout of
      torchvision's `alexnet`.
    - [Visualizing and Understanding Convolutional Networks](
        https://arxiv.org/abs/1311.2901) (Zeiler and Fergus 2013), ZFNet.

    `variant="original"` is the paper's network: five convolutions
    (96-256-384-384-256) with ReLU, local response normalisation after the
    ReLU of blocks 1 and 2, overlapping 3x3 stride-2 max pooling, conv2, conv4
    and conv5 grouped in two (the paper's two GPUs), fc6 and fc7 with 4096
    units and dropout, and fc8. It has exactly 60,965,224 parameters at 1000
    classes. The default input is 227x227 (as Caffe); a 224x224 input is
    zero-padded (1 before, 2 after) to reach the same 55x55 after conv1.

    `variant="one_weird_trick"` is torchvision's single-GPU layout
    (64-192-384-256-256, no LRN, no groups, dropout before fc6 and fc7),
    61,100,840 parameters at 224x224 and 1000 classes, one Keras layer per
    torchvision layer with weights.

    `variant="zfnet"` is Zeiler and Fergus's network (their figure 3): conv1
    96 kernels of 7x7 with stride 2, then 3x3 stride-2 max pooling and
    contrast normalisation (`lrn1`: ReLU, pool, normalise), conv2 256 of 5x5
    with stride 2, pooling and normalisation again, conv3-conv5
    384-384-256 of 3x3, no groups, fc6 and fc7 with 4096 units and dropout,
    fc8. It has 62,357,608 parameters at 224x224 and 1000 classes, and
    reaches the paper's sizes exactly: 110x110 after conv1, 55 after pool1,
    26 after conv2, 13 after pool2 and conv3-conv5, 6x6x256 after pool5.
    The paper trained with an implementation based on Krizhevsky's
    cuda-convnet, whose windows may overhang the bottom and right edges
    (`1 + ceil((size - window) / stride)` outputs); the paper's sizes are
    those. Here every stride-2 layer pads zeros after the image as far as
    its last window reaches (`overhang_padding`): at 224, one row and
    column before conv1 (`conv1_pad`), pool1 (`pool1_pad`) and pool2
    (`pool2_pad`), none before conv2 and pool5; conv3-conv5 pad 1 on each
    side. The "local contrast normalisation across feature maps" is
    AlexNet's local response normalisation across channels, with the AlexNet
    paper's constants (the paper gives none; see docs/model.md). The "paper"
    initialisation is Zeiler and Fergus's: weights N(0, 0.01), biases 0.

    Pretrained weights: `weights` takes Caffe's `bvlc_alexnet.caffemodel`
    (the original variant, top-1 57.1%) and torchvision's
    `alexnet-owt-7be5be79.pth` (one_weird_trick, top-1 56.5%) as they are
    published, or a `.weights.h5` converted from them with
    `python -m keras_alexnet.convert` (see `keras_alexnet.convert`). The
    variant, LRN constants and class count then follow the file, and
    `include_preprocessing=True` normalises with the statistics the weights
    were trained with.

    Layers are named `preprocessing` (with `include_preprocessing=True`),
    `conv1_pad` (when padding is needed; zfnet also `pool1_pad`, `conv2_pad`,
    `pool2_pad` and `pool5_pad` where its sizes need them), `conv1`..`conv5`,
    `lrn1`, `lrn2`, `pool1`, `pool2`, `pool5`, `flatten`, `fc6`, `drop6`,
    `fc7`, `drop7` and `fc8`. The model takes channels-last float images: normalised (see
    `keras_alexnet.presets`), or with `include_preprocessing=True` RGB pixel
    values in [0, 255]. Every convolution is a
    `keras_alexnet.layers.GroupedConv2D` (`groups=1` where the paper has no
    split) and every pooling a `keras_alexnet.layers.MaxPooling2D`: the
    weights are laid out exactly as in `keras.layers.Conv2D`, and each layer
    runs the fastest implementation measured for the backend
    (`BENCHMARKS.md`).

    Args:
        variant: `"original"`, `"one_weird_trick"` or `"zfnet"`; by default
            the weights file's, else `"original"`.
        include_top: whether to include fc6, fc7 and fc8. With
            `include_top=False` pretrained weights fill the convolutions.
        weights: `None` (random initialisation), the path of a
            `.caffemodel`, `.pth` / `.pt` (a torchvision AlexNet state dict,
            read with PyTorch) or `.weights.h5` file, or a `PretrainedWeights`
            from `keras_alexnet.convert.read_weights`. Nothing is downloaded.
            A `.weights.h5` saved by `model.save_weights` must come from the
            same architecture. Every shape is checked before any weight is
            assigned.
        input_tensor: optional Keras tensor to use as the model's input.
        input_shape: `(height, width, 3)`; defaults to 227x227x3 (original)
            or 224x224x3 (one_weird_trick, zfnet). With `include_top=False`
            height and width may be `None`.
        pooling: with `include_top=False`, `None` (4-D pool5 output),
            `"avg"` or `"max"` (global pooling to a 2-D output).
        classes: number of classes of fc8; by default the weights file's,
            else 1000.
        classifier_activation: activation of fc8, e.g. `"softmax"` or `None`
            for logits.
        dropout: dropout rate of fc6 and fc7 (the paper's 0.5).
        initialization: `"paper"` (weights N(0, 0.01); biases 1 in conv2,
            conv4, conv5, fc6 and fc7, 0 elsewhere; for zfnet, Zeiler and
            Fergus's: all biases 0), `"caffe"`
            (bvlc_alexnet: those biases 0.1, fc6/fc7 weights N(0, 0.005);
            trains more reliably), `"glorot"` (Keras' defaults) or `"he"`
            (He-normal kernels, zero biases: plain SGD leaves the initial
            plateau within a few hundred steps, which the paper's scheme does not).
        grouped_conv_implementation: `"auto"`, `"native"` or `"split"`;
            see `keras_alexnet.layers.GroupedConv2D`.
        lrn_implementation: `"auto"`, `"ops"` or `"native"`; see
            `keras_alexnet.layers.LocalResponseNormalization`.
        lrn_constants: the constants of lrn1 and lrn2 in the AlexNet paper's formula:
            `None` (the weights file's, else the paper's), `"paper"` (size 5,
            alpha 1e-4, beta 0.75, k 2), `"caffe"` (bvlc_alexnet's: alpha
            2e-5, k 1) or a dict with keys among `size`, `alpha`, `beta`,
            `k` (the others the paper's). They are saved with the model.
        include_preprocessing: whether the model takes RGB pixel values in
            [0, 255] and normalises them itself, in a first
            `keras.layers.Normalization` layer named `preprocessing`, with
            the statistics of its weights (Caffe: subtract the mean;
            torchvision and others: ImageNet's mean and standard deviation),
            as keras.applications' ConvNeXt and EfficientNet do. Without it
            the model takes images normalised with those statistics: the
            model records them either way (`pixel_statistics`), and
            `EvalPreset.for_model`, `TrainPreset.for_model`, the export,
            `predict` and `preprocess_input(x, weights=model)` follow them.
        name: the model's name.

    Returns:
        An `AlexNetModel`: a functional `keras.Model` that records its input
        statistics (`pixel_mean`, `pixel_std`, RGB in [0, 255]).

    Examples:
        >>> model = keras_alexnet.AlexNet()
        >>> model.count_params()
        60965224
        >>> keras_alexnet.AlexNet(variant="zfnet").count_params()
        62357608
        >>> features = keras_alexnet.AlexNet(include_top=False, pooling="avg")
        >>> pretrained = keras_alexnet.AlexNet(weights="bvlc_alexnet.caffemodel",
        ...                                    include_preprocessing=True)
    """
    pretrained = weights
    if weights is not None and not isinstance(weights, convert.PretrainedWeights):
        pretrained = convert.read_weights(weights)
    variant, classes, lrn_constants = _follow_weights(
        pretrained, variant, classes, lrn_constants, include_top)
    _validate_arguments(variant, include_top, pooling, classes, dropout, initialization)
    lrn_constants = _resolve_lrn_constants(variant, lrn_constants)
    input_shape = _resolve_input_shape(variant, input_shape, input_tensor, include_top)
    spec = _SPECS[variant]

    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="images")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="images")

    def pad(x, layer_name, window, stride):
        """Zero padding before a downsampling layer, where its variant needs it."""
        padding = [_padding(variant, layer_name, side, window, stride)
                   for side in x.shape[1:3]]
        if not any(sum(side) for side in padding):
            return x
        return keras.layers.ZeroPadding2D(
            padding, data_format="channels_last", name=f"{layer_name}_pad"
        )(x)

    def conv(x, layer_name, filters, kernel_size, groups=1, **kwargs):
        kernel_init, bias_init = initializers(initialization, layer_name, variant)
        return GroupedConv2D(
            filters, kernel_size, groups=groups, activation="relu",
            kernel_initializer=kernel_init, bias_initializer=bias_init,
            implementation=grouped_conv_implementation,
            data_format="channels_last", name=layer_name, **kwargs,
        )(x)

    def max_pool(x, layer_name):
        return MaxPooling2D(
            3, strides=2, data_format="channels_last", name=layer_name
        )(pad(x, layer_name, 3, 2))

    def pool_and_lrn(x, index):
        if spec["lrn_after_pool"]:
            return lrn(max_pool(x, f"pool{index}"), f"lrn{index}")
        return max_pool(lrn(x, f"lrn{index}"), f"pool{index}")

    def lrn(x, layer_name):
        if not spec["lrn"]:
            return x
        return LocalResponseNormalization(
            **lrn_constants, implementation=lrn_implementation, name=layer_name,
        )(x)

    pixel_mean, pixel_std = statistics_of_weights(pretrained)
    x = _preprocessing(pixel_mean, pixel_std)(inputs) if include_preprocessing else inputs
    f1, f2, f3, f4, f5 = spec["filters"]
    groups = spec["groups"]
    (conv1_kernel, conv1_stride), (conv2_kernel, conv2_stride) = spec["conv1"], spec["conv2"]
    x = pad(x, "conv1", conv1_kernel, conv1_stride)
    x = conv(x, "conv1", f1, conv1_kernel, strides=conv1_stride, padding="valid")
    x = pool_and_lrn(x, 1)
    if conv2_stride == 1:
        x = conv(x, "conv2", f2, conv2_kernel, groups=groups, padding="same")
    else:
        x = pad(x, "conv2", conv2_kernel, conv2_stride)
        x = conv(x, "conv2", f2, conv2_kernel, strides=conv2_stride, groups=groups,
                 padding="valid")
    x = pool_and_lrn(x, 2)
    x = conv(x, "conv3", f3, 3, padding="same")
    x = conv(x, "conv4", f4, 3, groups=groups, padding="same")
    x = conv(x, "conv5", f5, 3, groups=groups, padding="same")
    x = max_pool(x, "pool5")

    if include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        for index in (6, 7):
            layer_name = f"fc{index}"
            kernel_init, bias_init = initializers(initialization, layer_name, variant)
            fully_connected = keras.layers.Dense(
                4096, activation="relu", kernel_initializer=kernel_init,
                bias_initializer=bias_init, name=layer_name,
            )
            drop = keras.layers.Dropout(dropout, name=f"drop{index}")
            if spec["dropout_before_fc"]:
                x = fully_connected(drop(x))
            else:
                x = drop(fully_connected(x))
        kernel_init, bias_init = initializers(initialization, "fc8", variant)
        x = keras.layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=kernel_init, bias_initializer=bias_init, name="fc8",
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    if input_tensor is not None:
        model_inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        model_inputs = inputs
    model = AlexNetModel(model_inputs, x, name=name, pixel_mean=pixel_mean, pixel_std=pixel_std)
    if pretrained is not None:
        pretrained.load_into(model)
    return model
