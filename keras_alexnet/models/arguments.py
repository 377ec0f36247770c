"""`AlexNet`'s arguments checked and resolved against each other and the weights file."""

import math

from keras_alexnet._validation import check_positive_int
from keras_alexnet.models.architecture import (
    DEFAULT_INPUT_SHAPES,
    INITIALIZATIONS,
    LRN_CONSTANTS,
    POOLINGS,
    VARIANTS,
    _SPECS,
    minimum_input_size,
)


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
