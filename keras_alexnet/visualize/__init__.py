"""Seeing inside AlexNet: the figures of the AlexNet and ZFNet papers.

Plain functions that take a model from `keras_alexnet.AlexNet(...)` (any
variant, any backend) and layer names such as `"conv5"`, and return NumPy
arrays; `keras_alexnet.visualize.plotting` draws them with matplotlib.

- AlexNet figure 3: `kernel_mosaic`, `kernel_color_saturation`.
- AlexNet figure 4: `top_predictions`, `nearest_neighbors`, `images_at`.
- ZFNet (https://arxiv.org/abs/1311.2901): `occlusion_sensitivity`,
  `deconvnet`, `top_activating_patches`, `receptive_field`, `layer_probe`.
"""

from keras_alexnet.visualize import plotting
from keras_alexnet.visualize._model import images_at, strongest_feature_maps
from keras_alexnet.visualize.deconvnet import deconvnet
from keras_alexnet.visualize.kernels import (
    kernel_color_saturation, kernel_groups, kernel_mosaic, scale_to_unit_range,
)
from keras_alexnet.visualize.occlusion import OcclusionMaps, occlusion_sensitivity
from keras_alexnet.visualize.patches import (
    ReceptiveField, TopPatches, receptive_field, top_activating_patches,
)
from keras_alexnet.visualize.predictions import nearest_neighbors, top_predictions
from keras_alexnet.visualize.probe import layer_probe

__all__ = [
    "OcclusionMaps", "ReceptiveField", "TopPatches", "deconvnet", "images_at", "plotting",
    "kernel_color_saturation", "kernel_groups", "kernel_mosaic", "layer_probe",
    "nearest_neighbors", "occlusion_sensitivity", "receptive_field",
    "scale_to_unit_range", "strongest_feature_maps", "top_activating_patches",
    "top_predictions",
]
