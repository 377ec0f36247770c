"""Move weights between PyTorch layouts and `keras_alexnet.AlexNet`."""

import keras
import numpy as np

# torchvision.models.alexnet's state-dict prefixes, one per weighted layer.
TORCHVISION_LAYER_NAMES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor; torch is not imported here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def torch_conv_kernel_to_keras(kernel):
    """(out, in / groups, kh, kw) -> Keras' (kh, kw, in / groups, out)."""
    return np.transpose(_to_numpy(kernel), (2, 3, 1, 0))


def torch_dense_kernel_to_keras(kernel, channels_first_input_shape=None):
    """(out, in) -> Keras' (in, out).

    For the first dense layer after a flatten, PyTorch flattens (C, H, W)
    while Keras flattens (H, W, C); pass `channels_first_input_shape=(C, H, W)`
    to reorder the input rows accordingly.
    """
    kernel = _to_numpy(kernel)
    if channels_first_input_shape is not None:
        channels, height, width = channels_first_input_shape
        kernel = kernel.reshape(kernel.shape[0], channels, height, width)
        kernel = kernel.transpose(0, 2, 3, 1).reshape(kernel.shape[0], -1)
    return kernel.T


def load_torch_state_dict(model, state_dict, layer_names=None):
    """Copies a PyTorch AlexNet state dict into a `keras_alexnet.AlexNet`.

    Args:
        model: a model from `keras_alexnet.AlexNet(include_top=True)` whose
            architecture matches the state dict (`variant="one_weird_trick"`
            for torchvision's `alexnet`).
        state_dict: mapping of `"<prefix>.weight"` / `"<prefix>.bias"` to
            tensors or arrays.
        layer_names: mapping of state-dict prefix to Keras layer name;
            defaults to torchvision's (`TORCHVISION_LAYER_NAMES`).

    Raises:
        ValueError: a layer or tensor is missing or has the wrong shape.
    """
    layer_names = layer_names or TORCHVISION_LAYER_NAMES
    pool5_shape = model.get_layer("pool5").output.shape[1:]  # (H, W, C)
    for prefix, layer_name in layer_names.items():
        missing = [key for key in (f"{prefix}.weight", f"{prefix}.bias")
                   if key not in state_dict]
        if missing:
            raise ValueError(f"The state dict has no {missing} for layer {layer_name!r}.")
        layer = model.get_layer(layer_name)
        kernel = state_dict[f"{prefix}.weight"]
        if isinstance(layer, keras.layers.Dense):
            flattened = None
            if layer_name == "fc6":
                height, width, channels = pool5_shape
                flattened = (channels, height, width)
            kernel = torch_dense_kernel_to_keras(kernel, flattened)
        else:
            kernel = torch_conv_kernel_to_keras(kernel)
        bias = _to_numpy(state_dict[f"{prefix}.bias"])
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [kernel.shape, bias.shape] != expected:
            raise ValueError(
                f"Shapes for layer {layer_name!r} do not match: the model has "
                f"{expected}, the state dict gives {[kernel.shape, bias.shape]}."
            )
        layer.set_weights([kernel, bias])

