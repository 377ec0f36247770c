"""The architectures: each variant's layers, its initialisation schemes and its geometry.

`_SPECS` holds what differs between AlexNet (`original`), torchvision's
single-GPU layout (`one_weird_trick`) and ZFNet (`zfnet`); the functions here
say how each pads, how large its feature maps are and how it is initialised.
`keras_alexnet.models.alexnet.AlexNet` builds the graph from them.
"""

import keras

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

    Examples:
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

    Examples:
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
