"""The paper's training recipe (§5) as a `Recipe`, with the variant and size it resolves."""

import dataclasses
import os

from keras_alexnet._validation import check_positive_int
from keras_alexnet.models.alexnet import DEFAULT_INPUT_SHAPES, validate_architecture
from keras_alexnet.presets import TrainPreset


def default_image_size(variant):
    """The crop size a `Recipe` of `variant` trains at without `image_size`:
    `AlexNet`'s default input size (227, or 224 for one_weird_trick and zfnet)."""
    return DEFAULT_INPUT_SHAPES[variant or "original"][0]


def trained_variant(variant, pretrained=None):
    """The variant a recipe of `variant` trains: the weights file's when it names one
    (`pretrained`, read from `Recipe.fine_tune`), else `variant`, else "original"."""
    return (pretrained.variant if pretrained else None) or variant or "original"


@dataclasses.dataclass
class Recipe:
    """Training settings; the defaults are the paper's (§5).

    SGD with momentum 0.9, batch 128, weight decay 5e-4, learning rate 0.01
    divided by 10 when the validation top-1 error has not improved for
    `lr_patience` epochs, at most `max_lr_drops` (3) times, 90 epochs,
    dropout 0.5, the paper's initialisation, 227x227 crops of 256x256 images.
    `image_size` `None` is the variant's input size (`AlexNet`'s default:
    227 for the original, 224 for one_weird_trick and ZFNet).

    Weight decay is applied as in the paper's update rule
    `v <- 0.9 v - wd * lr * w - lr * dL/dw`: an L2 penalty `wd / 2 * ||w||^2`
    on every kernel adds `wd * w` to the gradient before momentum. Keras'
    `SGD(weight_decay=...)` is decoupled (applied outside momentum), which is
    a different rule. Biases are not decayed (as in Caffe's bvlc_alexnet).

    `variant`: `None` is `"original"` (and becomes it), or with `fine_tune`
    the weights file's (see `keras_alexnet.AlexNet`; `train` records it).

    Transfer learning (ZFNet §5.2, https://arxiv.org/abs/1311.2901: an
    ImageNet network with a new softmax layer trained on Caltech-101/256):
    `fine_tune` is a weights file that `AlexNet(weights=...)` reads
    (`.weights.h5`, `.caffemodel`, `.pth` / `.pt`; a relative path is made
    absolute). The run trains that network at `image_size` with a new fc8
    for the data's classes (see `fine_tuned_model`); the variant, LRN
    constants and input normalisation follow the file. `freeze` names the
    last layer that is not trained (e.g. `"conv5"`): it and every layer
    before it keep the file's weights exactly. A resumed run reads the file
    again for its architecture, so keep it where it was.
    """

    variant: str = None
    image_size: int = None
    resize_size: int = 256
    epochs: int = 90
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    initialization: str = "paper"
    lr_factor: float = 0.1
    lr_patience: int = 5
    max_lr_drops: int = 3
    lighting_std: float = 0.1
    policy: str = None
    mixed_precision: bool = False
    steps_per_epoch: int = None
    ten_crop: bool = False
    seed: int = None
    fine_tune: str = None
    freeze: str = None

    def __post_init__(self):
        validate_architecture(self.variant, self.initialization, self.dropout)
        if self.variant is None and self.fine_tune is None:
            # Resolved, as `image_size` is: a run records and compares what it trains.
            self.variant = "original"
        if self.image_size is None:
            self.image_size = default_image_size(self.variant)
        for name in ("image_size", "resize_size", "epochs", "batch_size", "lr_patience"):
            check_positive_int(name, getattr(self, name))
        if self.steps_per_epoch is not None:
            check_positive_int("steps_per_epoch", self.steps_per_epoch)
        if self.resize_size < self.image_size:
            raise ValueError(
                f"`resize_size` ({self.resize_size}) must be >= `image_size` "
                f"({self.image_size})."
            )
        for name in ("learning_rate", "lr_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: {self.weight_decay!r}")
        if not isinstance(self.max_lr_drops, int) or self.max_lr_drops < 0:
            raise ValueError(f"`max_lr_drops` must be >= 0. Received: {self.max_lr_drops!r}")
        if self.freeze is not None and self.fine_tune is None:
            raise ValueError(
                "`freeze` keeps pretrained layers as they are, so it needs `fine_tune`: "
                f"the weights file to start from. Received: freeze={self.freeze!r}"
            )
        if self.fine_tune is not None:
            self.fine_tune = os.path.abspath(os.path.expanduser(os.fspath(self.fine_tune)))
        # Validates the augmentation settings before any data is touched.
        TrainPreset(crop_size=self.image_size, resize_size=self.resize_size,
                    lighting_std=self.lighting_std, policy=self.policy)
