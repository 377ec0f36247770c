"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as a Keras 3 model, and ZFNet
(Zeiler and Fergus 2013), its successor, as `variant="zfnet"`."""

import math

import keras
import numpy as np

from keras_alexnet import convert
from keras_alexnet._validation import check_positive_int
from keras_alexnet.layers import GroupedConv2D, LocalResponseNormalization, MaxPooling2D
from keras_alexnet.models.pixel_statistics import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    AlexNetModel,
)

VARIANTS = ("original", "one_weird_trick", "zfnet")
INITIALIZATIONS = ("paper", "caffe", "glorot", "he")
POOLINGS = (None, "avg", "max")

DEFAULT_INPUT_SHAPES = {"original": (227, 227, 3), "one_weird_trick": (224, 224, 3),
                        "zfnet": (224, 224, 3)}

# Constants of `LocalResponseNormalization`, in the paper's formula (the sum of
# squares is not divided by `size`). Caffe divides its alpha by local_size and
# defaults k to 1: bvlc_alexnet's `local_size 5, alpha 1e-4, beta 0.75` is
# alpha 2e-5, k 1 here.
LRN_CONSTANTS = {
    "paper": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
    "caffe": {"size": 5, "alpha": 2e-5, "beta": 0.75, "k": 1.0},
}
# The layer `include_preprocessing=True` puts first; it takes pixel values in [0, 255].
PREPROCESSING_LAYER_NAME = "preprocessing"

# Layers whose bias the AlexNet paper initialises to 1 ("accelerates the early
# stages of learning by providing the ReLUs with positive inputs", §5).
_PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")

# Per variant: conv filters, (kernel, stride) of conv1 and conv2, conv2/4/5
# groups, LRN after blocks 1-2 and whether it comes after the pooling
# (ZFNet) or before it (AlexNet), how conv1 is padded ("centred": only what
# a valid conv1 needs, see `conv1_padding`; an int: that many on each side),
# whether windows overhang (see below), whether dropout comes before
# (torchvision) or after (papers) fc6/fc7, and the layers whose bias
# "paper" initialises to 1.
#
# `overhang`: Zeiler and Fergus trained with an implementation based on
# Krizhevsky's cuda-convnet, whose convolution and pooling windows may
# overhang the bottom and right edges: `1 + ceil((size - window) / stride)`
# outputs (cuda-convnet's layer.py), which is what figure 3's sizes need at
# 224 (110 after conv1, not 109; 55 after pool1; 13 after pool2). Every
# stride-2 layer of zfnet pads zeros after the image as far as its last
# window reaches. For pooling this is exact: its inputs come straight from
# a ReLU, so a zero never beats the window's real values.
_SPECS = {
    "original": dict(
        filters=(96, 256, 384, 384, 256), conv1=(11, 4), conv2=(5, 1), groups=2, lrn=True,
        lrn_after_pool=False, conv1_padding="centred", overhang=False,
        dropout_before_fc=False, paper_bias_one=_PAPER_BIAS_ONE,
    ),
    "one_weird_trick": dict(
        filters=(64, 192, 384, 256, 256), conv1=(11, 4), conv2=(5, 1), groups=1, lrn=False,
        lrn_after_pool=False, conv1_padding=2, overhang=False, dropout_before_fc=True,
        paper_bias_one=_PAPER_BIAS_ONE,
    ),
    # Zeiler & Fergus, figure 3 and §3: "All weights are initialized to
    # 10^-2 and biases are set to 0."
    "zfnet": dict(
        filters=(96, 256, 384, 384, 256), conv1=(7, 2), conv2=(5, 2), groups=1, lrn=True,
        lrn_after_pool=True, conv1_padding=None, overhang=True, dropout_before_fc=False,
        paper_bias_one=(),
    ),
}
# bvlc_alexnet's train_val.prototxt: the same layers get bias 0.1 (bias 1 gave
# Caffe a flat loss) and fc6/fc7 weights have standard deviation 0.005.
_CAFFE_FC_STD = 0.005


def initializers(initialization, layer_name, variant="original"):
    """Kernel and bias initialisers of one layer under a named scheme.

    Args:
        initialization: `"paper"`, `"caffe"`, `"glorot"` or `"he"` (see `AlexNet`).
        layer_name: e.g. `"conv2"` or `"fc8"`.
        variant: the `AlexNet` variant, whose paper says which biases start at 1.

    Example:

    >>> kernel_init, bias_init = initializers("paper", "fc8", "zfnet")
    """
    if initialization == "glorot":
        return "glorot_uniform", "zeros"
    if initialization == "he":
        return "he_normal", "zeros"
    std = 0.01
    bias = 1.0 if layer_name in _SPECS[variant]["paper_bias_one"] else 0.0
    if initialization == "caffe":
        bias = 0.1 if layer_name in _PAPER_BIAS_ONE else 0.0
        if layer_name in ("fc6", "fc7"):
            std = _CAFFE_FC_STD
    return (
        keras.initializers.RandomNormal(mean=0.0, stddev=std),
        keras.initializers.Constant(bias),
    )


def overhang_padding(size, window, stride):
    """Zero padding `(0, after)` of one side that gives cuda-convnet's output size.

    `1 + ceil((size - window) / stride)` windows, the last one overhanging
    the end: ZFNet's sizes (see `_SPECS`). For a side of unknown size
    (`None`), `stride - 1` zeros after, which gives that many windows for
    every size (none of them starting in the padding, for windows at least
    as large as the stride, as ZFNet's are).

    Example:

    >>> overhang_padding(224, 7, 2)   # conv1: 1 + ceil(217 / 2) = 110
    (0, 1)
    """
    if size is None:
        return (0, stride - 1)
    return (0, (-(size - window)) % stride)


def conv1_padding(size, variant="original"):
    """Zero padding `(before, after)` applied to one spatial side before conv1.

    The paper's 224x224 input does not fit an 11x11 stride-4 valid convolution
    ((224 - 11) / 4 is not an integer); Caffe feeds 227. For the original
    variant every size is padded up to the next size the convolution covers
    exactly, one pixel more after than before: 227 gets none and 224 gets
    (1, 2), which reaches the paper's 55x55 (a side of unknown size gets
    none). The torchvision variant always pads 2 on both sides, as
    torchvision does. ZFNet's 7x7 stride-2 conv1 pads after only, as far as
    its last window overhangs (`overhang_padding`): 224 gets (0, 1), which
    reaches the paper's 110x110.
    """
    spec = _SPECS[variant]
    if spec["overhang"]:
        return overhang_padding(size, *spec["conv1"])
    rule = spec["conv1_padding"]
    if rule != "centred":
        return (rule, rule)
    if size is None:
        return (0, 0)
    total = (-(size - 11)) % 4
    return (total // 2, total - total // 2)


def _downsampling_layers(variant):
    """`(name, window, stride)` of the layers that change the spatial size, in order."""
    spec = _SPECS[variant]
    layers = [("conv1", *spec["conv1"]), ("pool1", 3, 2)]
    if spec["conv2"][1] > 1:  # otherwise conv2 pads "same" and keeps the size
        layers.append(("conv2", *spec["conv2"]))
    return layers + [("pool2", 3, 2), ("pool5", 3, 2)]


def _padding(variant, layer_name, size, window, stride):
    """Zero padding `(before, after)` of one side of a downsampling layer's input."""
    if layer_name == "conv1":
        return conv1_padding(size, variant)
    if _SPECS[variant]["overhang"]:
        return overhang_padding(size, window, stride)
    return (0, 0)


def feature_map_size(size, variant="original"):
    """Spatial size of pool5's output for an input side of `size` pixels
    (0 or less when a layer's window does not fit)."""
    for layer_name, window, stride in _downsampling_layers(variant):
        size += sum(_padding(variant, layer_name, size, window, stride))
        if size < window:
            return 0
        size = (size - window) // stride + 1
    return size


def minimum_input_size(variant="original"):
    size = 11
    while feature_map_size(size, variant) < 1:
        size += 1
    return size


def validate_architecture(variant, initialization, dropout):
    """Raises ValueError for an unknown variant or initialisation, or a dropout
    rate outside [0, 1): the checks a training recipe makes before any data is
    read, and `AlexNet` before it builds. `variant=None` stands for the
    default (the weights file's, else `"original"`)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(
            f"`variant` must be one of {VARIANTS}. Received: variant={variant!r}"
        )
    if initialization not in INITIALIZATIONS:
        raise ValueError(
            f"`initialization` must be one of {INITIALIZATIONS}. "
            f"Received: initialization={initialization!r}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )


def _validate_arguments(variant, include_top, pooling, classes, dropout, initialization):
    validate_architecture(variant, initialization, dropout)
    if pooling not in POOLINGS:
        raise ValueError(
            f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}"
        )
    if include_top and pooling is not None:
        raise ValueError(
            "`pooling` applies only to the feature extractor; pass "
            f"include_top=False to use it. Received: pooling={pooling!r}, "
            f"include_top={include_top}"
        )
    check_positive_int("classes", classes)


def _resolve_lrn_constants(variant, lrn_constants):
    """The LRN layer's constants: the paper's by default, a named set or a dict."""
    if not _SPECS[variant]["lrn"]:
        if lrn_constants is not None:
            raise ValueError(
                f"variant={variant!r} has no local response normalisation. "
                f"Received: lrn_constants={lrn_constants!r}"
            )
        return None
    if lrn_constants is None:
        return LRN_CONSTANTS["paper"]
    if isinstance(lrn_constants, str) and lrn_constants in LRN_CONSTANTS:
        return LRN_CONSTANTS[lrn_constants]
    if isinstance(lrn_constants, dict) and set(lrn_constants) <= set(LRN_CONSTANTS["paper"]):
        return {**LRN_CONSTANTS["paper"], **lrn_constants}
    raise ValueError(
        f"`lrn_constants` must be None, one of {tuple(LRN_CONSTANTS)} or a dict with "
        f"keys among {tuple(LRN_CONSTANTS['paper'])}. Received: lrn_constants={lrn_constants!r}"
    )


def _same_lrn_constants(first, second):
    return first.keys() == second.keys() and all(
        math.isclose(first[key], second[key], rel_tol=1e-6) for key in first)


def _follow_weights(pretrained, variant, classes, lrn_constants, include_top):
    """The variant, class count and LRN constants of the weights file.

    What the file records wins; an argument that contradicts it is an error.
    A `.weights.h5` saved by `model.save_weights` records only its class
    count (fc8's width, the default of `classes`); the other arguments (or
    their defaults) apply.
    """
    if pretrained is None or pretrained.variant is None:
        if classes is None:
            classes = (pretrained.classes if pretrained is not None and pretrained.classes
                       else 1000)
        return variant or "original", classes, lrn_constants
    origin = f"{pretrained.path} holds {pretrained.source} weights of"
    if variant not in (None, pretrained.variant):
        raise ValueError(
            f"{origin} variant={pretrained.variant!r}. Received: variant={variant!r}"
        )
    if include_top and classes not in (None, pretrained.classes):
        raise ValueError(
            f"{origin} {pretrained.classes} classes; build with include_top=False to "
            f"use its features for another task. Received: classes={classes!r}"
        )
    if lrn_constants is not None:
        requested = _resolve_lrn_constants(pretrained.variant, lrn_constants)
        if not _same_lrn_constants(requested, pretrained.lrn_constants):
            raise ValueError(
                f"{origin} LRN constants {pretrained.lrn_constants}. "
                f"Received: lrn_constants={lrn_constants!r}"
            )
    return pretrained.variant, pretrained.classes, pretrained.lrn_constants


def _statistics(pretrained):
    """RGB `(mean, std)` in [0, 255] the weights were trained with: the file's
    record (Caffe: its mean, no scaling), else ImageNet's (the presets')."""
    if pretrained is not None and pretrained.pixel_mean is not None:
        return tuple(pretrained.pixel_mean), tuple(pretrained.pixel_std)
    return IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD


def _preprocessing(mean, std):
    """`keras.layers.Normalization` of pixel values in [0, 255] by these statistics."""
    return keras.layers.Normalization(
        mean=list(mean), variance=[value**2 for value in std],
        name=PREPROCESSING_LAYER_NAME,
    )


def normalizes_inputs(model):
    """Whether `model` takes raw pixel values and normalises them itself.

    True for `AlexNet(include_preprocessing=True)` and for any model whose
    inputs go straight into a `keras.layers.Normalization` or `Rescaling`
    layer (keras.applications' ConvNeXt and EfficientNet, for example), or
    into a nested model that does (such a model wrapped in a
    `keras.Sequential` or a functional model). The presets, evaluation and
    `export_saved_model` use it so that no image is normalised twice.

    Example:

    >>> normalizes_inputs(keras_alexnet.AlexNet(include_preprocessing=True))
    True
    >>> wrapped = keras.Sequential(
    ...     [keras.Input((227, 227, 3)), keras_alexnet.AlexNet(include_preprocessing=True)])
    >>> normalizes_inputs(wrapped)
    True
    """
    inputs = {id(tensor) for tensor in model.inputs}
    for layer in model.layers:
        # Every call of the layer, not only its first (`layer.input`): a
        # nested model's first call is the one that built it, on its own
        # inputs, not on the wrapping model's.
        if not any(id(tensor) in inputs for node in layer._inbound_nodes
                   for tensor in node.input_tensors):
            continue
        if isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling)):
            return True
        if isinstance(layer, keras.Model) and normalizes_inputs(layer):
            return True
    return False


OUTPUTS = ("auto", "probabilities", "logits", "features")


def resolve_outputs(model, outputs="auto"):
    """What `model` outputs: `"probabilities"`, `"logits"` or `"features"`.

    `export_saved_model` and `keras_alexnet.predict` use it to apply a
    softmax exactly once, wherever the model's own softmax sits (the
    activation of fc8, a `keras.layers.Softmax` layer, a wrapped model).

    Args:
        model: a Keras model with one output and a fixed input size.
        outputs: one of `OUTPUTS`. `"auto"` decides by a probe:
            probabilities if the model's outputs on two random batches (one
            at the scale of normalised images, one 50 times larger) are
            non-negative rows summing to 1, else logits if the model has a
            classifier layer named `fc8` (also inside a nested model), else
            features. Any other value is checked and returned.

    Example:

    >>> resolve_outputs(keras_alexnet.AlexNet(input_shape=(67, 67, 3)))
    'probabilities'
    >>> resolve_outputs(keras_alexnet.AlexNet(input_shape=(67, 67, 3),
    ...                                       classifier_activation=None))
    'logits'
    """
    if outputs not in OUTPUTS:
        raise ValueError(f"`outputs` must be one of {OUTPUTS}. Received: outputs={outputs!r}")
    if len(model.outputs) != 1:
        raise ValueError(f"The model must have one output. Received: {len(model.outputs)}")
    rank = len(model.output_shape)
    if outputs in ("probabilities", "logits") and rank != 2:
        raise ValueError(
            f"outputs={outputs!r} needs (batch, classes) outputs, but the model outputs "
            f"{model.output_shape}: a feature extractor's outputs are outputs='features'."
        )
    if outputs != "auto":
        return outputs
    if rank != 2:
        return "features"
    input_shape = tuple(model.input_shape[1:])
    if None in input_shape:
        raise ValueError(
            "Probing what the model outputs needs a fixed input size. "
            f"Received: input_shape={model.input_shape}"
        )
    # Two probes, one at the scale of normalised images and one far beyond it.
    probes = np.random.default_rng(0).normal(size=(2, *input_shape))
    probes *= np.array([1.0, 50.0]).reshape(2, *[1] * len(input_shape))
    scores = keras.ops.convert_to_numpy(model(probes.astype("float32"), training=False))
    scores = scores.astype("float64")
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-3):
        return "probabilities"
    return "logits" if _has_layer(model, "fc8") else "features"


def _has_layer(model, name):
    """Whether `model` or a model nested in it has a layer called `name`."""
    return any(layer.name == name or (hasattr(layer, "layers") and _has_layer(layer, name))
               for layer in model.layers)


def _resolve_input_shape(variant, input_shape, input_tensor, include_top):
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        return DEFAULT_INPUT_SHAPES[variant]
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            "`input_shape` must be (height, width, 3): channels-last RGB images. "
            f"Received: input_shape={input_shape}"
        )
    minimum = minimum_input_size(variant)
    for side in input_shape[:2]:
        if side is None:
            if include_top:
                raise ValueError(
                    "With include_top=True the input height and width must be "
                    "known (the size of fc6 follows them). "
                    f"Received: input_shape={input_shape}"
                )
        elif side < minimum:
            raise ValueError(
                f"Input height and width must be at least {minimum} for "
                f"variant={variant!r} (pool5 would be empty). "
                f"Received: input_shape={input_shape}"
            )
    return input_shape


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
    paper's constants (the paper gives none; see the README). The "paper"
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

    Example:

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

    pixel_mean, pixel_std = _statistics(pretrained)
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
