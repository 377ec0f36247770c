"""Read Caffe's `bvlc_alexnet.caffemodel` without Caffe.

A `.caffemodel` is a serialised `NetParameter` protocol buffer (Caffe's
`src/caffe/proto/caffe.proto`). This module decodes the few fields AlexNet
needs straight from the wire format: no Caffe, no generated protobuf code.
Both layouts are read:

- the older `NetParameter.layers` (field 2, `V1LayerParameter`: name 4, type
  5 as an enum, blobs 6), in which `bvlc_alexnet.caffemodel` is published,
  with legacy 4-D blob dims (`num` 1, `channels` 2, `height` 3, `width` 4);
- the newer `NetParameter.layer` (field 100, `LayerParameter`: name 1, type
  2 as a string, blobs 7) with `BlobShape` (field 7: `dim` 1, packed int64).

Blob values are `data` (field 5, packed float32) or `double_data` (field 8).
The float32 values are NumPy views into the file's bytes, not copies: the
published file is 233 MB.

The network must be bvlc_alexnet's: conv1-conv5 (conv2, conv4 and conv5 in
two groups), norm1 and norm2 (LRN across channels) before pool1 and pool2,
pool5, fc6-fc8, with its strides, paddings and pooling. Its LRN constants
are read from the file: Caffe divides `alpha` by `local_size`, so
bvlc_alexnet's `local_size 5, alpha 1e-4, beta 0.75` (k 1 by default) is the
paper's formula with alpha 2e-5, k 1. Caffe feeds BGR images, so conv1's
input channels are reversed here and the model takes RGB like every other
keras-alexnet model.
"""

import struct
from pathlib import Path

import numpy as np

from keras_alexnet.convert._pretrained import PretrainedWeights

# Per-channel means (RGB) of the ILSVRC-2012 mean image bvlc_alexnet was
# trained with (`imagenet_mean.binaryproto`: B 104.00699, G 116.66877,
# R 122.67891). Caffe does not scale: the standard deviation is 1.
PIXEL_MEAN = (122.67891, 116.66877, 104.00699)
PIXEL_STD = (1.0, 1.0, 1.0)

# V1LayerParameter.LayerType values of the layers AlexNet needs.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling"}

# bvlc_alexnet's layers: (type, settings that must hold). Convolutions:
# kernel (checked through the blob shapes), stride, padding and groups.
_EXPECTED = {
    "conv1": ("Convolution", dict(stride=4, pad=0, group=1)),
    "norm1": ("LRN", {}),
    "pool1": ("Pooling", dict(pool="MAX", kernel_size=3, stride=2, pad=0)),
    "conv2": ("Convolution", dict(stride=1, pad=2, group=2)),
    "norm2": ("LRN", {}),
    "pool2": ("Pooling", dict(pool="MAX", kernel_size=3, stride=2, pad=0)),
    "conv3": ("Convolution", dict(stride=1, pad=1, group=1)),
    "conv4": ("Convolution", dict(stride=1, pad=1, group=2)),
    "conv5": ("Convolution", dict(stride=1, pad=1, group=2)),
    "pool5": ("Pooling", dict(pool="MAX", kernel_size=3, stride=2, pad=0)),
    "fc6": ("InnerProduct", {}),
    "fc7": ("InnerProduct", {}),
    "fc8": ("InnerProduct", {}),
}
_WEIGHTED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# Field numbers (caffe.proto).
_NET_V1_LAYERS, _NET_LAYER = 2, 100
_V1 = dict(name=4, type=5, blobs=6, convolution=10, lrn=18, pooling=19, v0_layer=1)
_V2 = dict(name=1, type=2, blobs=7, convolution=106, lrn=118, pooling=121)
_POOL_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


class _CorruptFile(Exception):
    """The bytes are not a well-formed protocol buffer."""


def read_caffemodel(path):
    """Reads bvlc_alexnet's weights and architecture from a `.caffemodel` file.

    Args:
        path: a `.caffemodel` with the layers of Caffe's
            `models/bvlc_alexnet` (V1 or V2 format).

    Returns:
        A `PretrainedWeights`: variant `"original"`, the class count of fc8,
        the file's LRN constants, bvlc_alexnet's pixel mean, and the weights.

    Raises:
        ValueError: the file is truncated or corrupt, or holds another
            network; the message names the file, the layer and the shapes.

    Examples:
        >>> weights = keras_alexnet.convert.caffe.read_caffemodel("bvlc_alexnet.caffemodel")
        >>> weights.lrn_constants
        {'size': 5, 'alpha': 2e-05, 'beta': 0.75, 'k': 1.0}
    """
    buffer = Path(path).read_bytes()
    try:
        layers = _read_layers(buffer)
    except _CorruptFile as error:
        raise ValueError(
            f"{path} is not a readable Caffe model: it is truncated or corrupt ({error})."
        ) from None
    if not layers:
        raise ValueError(f"{path} is not a Caffe model: it holds no layers.")
    _check_network(path, layers)
    weights = {}
    for name in _WEIGHTED:
        blobs = layers[name]["blobs"]
        if len(blobs) != 2:
            raise ValueError(
                f"{path}: layer {name!r} must have 2 blobs (weights and bias). "
                f"Received: {len(blobs)} blobs"
            )
        rank = 4 if name.startswith("conv") else 2
        weights[name] = (_squeeze_to_rank(path, name, "weights", blobs[0], rank),
                         _squeeze_to_rank(path, name, "bias", blobs[1], 1))
    conv1_kernel, conv1_bias = weights["conv1"]
    weights["conv1"] = (conv1_kernel[:, ::-1], conv1_bias)  # BGR -> RGB
    return PretrainedWeights(
        path=str(path), source="Caffe", variant="original",
        classes=int(weights["fc8"][1].shape[0]),
        lrn_constants=_lrn_constants(path, layers), pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD, layers=weights,
    )


def _check_network(path, layers):
    order = list(layers)
    for name, (layer_type, settings) in _EXPECTED.items():
        if name not in layers:
            raise ValueError(
                f"{path} is not bvlc_alexnet: it has no layer {name!r}. "
                f"Received: layers {order}"
            )
        layer = layers[name]
        if layer["type"] != layer_type:
            raise ValueError(
                f"{path}: layer {name!r} must be a {layer_type} layer. "
                f"Received: type {layer['type']!r}"
            )
        for key, expected in settings.items():
            if layer["params"].get(key) != expected:
                raise ValueError(
                    f"{path}: layer {name!r} must have {key} {expected}, as bvlc_alexnet "
                    f"does. Received: {key} {layer['params'].get(key)}"
                )
    for block in ("1", "2"):
        if order.index("norm" + block) > order.index("pool" + block):
            raise ValueError(
                f"{path}: pool{block} comes before norm{block}, as in CaffeNet; "
                "keras-alexnet builds the paper's (and bvlc_alexnet's) order, LRN then "
                "pooling."
            )


def _lrn_constants(path, layers):
    constants = []
    for name in ("norm1", "norm2"):
        params = layers[name]["params"]
        if params.get("norm_region", 0) != 0:
            raise ValueError(
                f"{path}: layer {name!r} normalises within channels; AlexNet's LRN is "
                "across channels."
            )
        size = params.get("local_size", 5)
        constants.append({
            "size": size,
            # Caffe scales the sum of squares by alpha / local_size.
            "alpha": _float32_value(params.get("alpha", 1.0)) / size,
            "beta": _float32_value(params.get("beta", 0.75)),
            "k": _float32_value(params.get("k", 1.0)),
        })
    if constants[0] != constants[1]:
        raise ValueError(
            f"{path}: norm1 and norm2 have different constants; keras-alexnet uses one "
            f"set for both. Received: {constants}"
        )
    return constants[0]


def _float32_value(value):
    """The shortest decimal that reads back as the same float32 (1e-4, not 9.99999974e-05)."""
    return float(str(np.float32(value)))


def _squeeze_to_rank(path, layer_name, what, blob, rank):
    """Drops the leading 1s of legacy 4-D dims, e.g. a bias (1, 1, 1, out) -> (out,)."""
    shape = list(blob.shape)
    while len(shape) > rank and shape[0] == 1:
        shape.pop(0)
    if len(shape) != rank:
        raise ValueError(
            f"{path}: the {what} of layer {layer_name!r} must have {rank} dimensions. "
            f"Received: shape {blob.shape}"
        )
    return blob.reshape(shape)


# ------------------------------------------------------- protobuf wire format


def _read_layers(buffer):
    """{layer name: {"type", "blobs", "params"}} of a NetParameter, in file order."""
    layers = {}
    for number, _, value in _fields(buffer, 0, len(buffer)):
        if number in (_NET_V1_LAYERS, _NET_LAYER):
            fields = _V1 if number == _NET_V1_LAYERS else _V2
            layer = _read_layer(buffer, *value, fields)
            layers.setdefault(layer["name"], layer)
    return layers


def _read_layer(buffer, start, end, fields):
    layer = {"name": None, "type": None, "blobs": [], "params": {}}
    for number, wire_type, value in _fields(buffer, start, end):
        if number == fields["name"]:
            layer["name"] = _string(buffer, value)
        elif number == fields["type"]:
            layer["type"] = (_V1_TYPES.get(value, f"V1 type {value}") if wire_type == 0
                             else _string(buffer, value))
        elif number == fields["blobs"]:
            layer["blobs"].append(_read_blob(buffer, *value))
        elif number == fields["convolution"]:
            layer["params"].update(_read_convolution(buffer, *value))
        elif number == fields["pooling"]:
            layer["params"].update(_read_pooling(buffer, *value))
        elif number == fields["lrn"]:
            layer["params"].update(_read_lrn(buffer, *value))
        elif number == fields.get("v0_layer"):
            raise _CorruptFile(
                "it uses Caffe's V0 layer format; upgrade it with Caffe's "
                "upgrade_net_proto_binary first"
            )
    return layer


def _read_blob(buffer, start, end):
    legacy_dims = [0, 0, 0, 0]  # num, channels, height, width
    shape, values = None, []
    for number, wire_type, value in _fields(buffer, start, end):
        if 1 <= number <= 4:
            legacy_dims[number - 1] = value
        elif number == 7:
            shape = [dim for dim_number, dim_wire, dim_value in _fields(buffer, *value)
                     if dim_number == 1
                     for dim in _varints(buffer, dim_wire, dim_value)]
        elif number in (5, 8):  # data (float32), double_data (float64)
            values.append(_numbers(buffer, wire_type, value, "<f4" if number == 5 else "<f8"))
    shape = tuple(shape if shape is not None else legacy_dims)
    data = values[0] if len(values) == 1 else np.concatenate(values or [np.empty(0, "<f4")])
    if data.size != int(np.prod(shape)):
        raise _CorruptFile(f"a blob of shape {shape} holds {data.size} values")
    return data.astype("float32", copy=False).reshape(shape)


def _read_convolution(buffer, start, end):
    # pad 3, group 5, stride 6; pad_h/pad_w 9/10, stride_h/stride_w 13/14.
    return _spatial_params(buffer, start, end, {3: "pad", 9: "pad", 10: "pad", 6: "stride",
                                                13: "stride", 14: "stride"},
                           {5: "group"}, dict(pad=0, stride=1, group=1))


def _read_pooling(buffer, start, end):
    # pool 1, kernel_size 2, stride 3, pad 4; kernel_h/w 5/6, stride_h/w 7/8, pad_h/w 9/10.
    params = _spatial_params(buffer, start, end, {2: "kernel_size", 5: "kernel_size",
                                                  6: "kernel_size", 3: "stride", 7: "stride",
                                                  8: "stride", 4: "pad", 9: "pad", 10: "pad"},
                             {1: "pool"}, dict(pool=0, pad=0, stride=1))
    params["pool"] = _POOL_METHODS.get(params["pool"], params["pool"])
    return params


def _spatial_params(buffer, start, end, spatial, scalars, defaults):
    """Integer settings of a layer; a spatial setting given per side (or repeated)
    is one number when all its values agree, else the tuple of them."""
    values = {}
    for number, wire_type, value in _fields(buffer, start, end):
        if number in spatial:
            values.setdefault(spatial[number], set()).update(
                _varints(buffer, wire_type, value))
        elif number in scalars:
            values[scalars[number]] = {value}
    params = dict(defaults)
    params.update({key: found.pop() if len(found) == 1 else tuple(sorted(found))
                   for key, found in values.items()})
    return params


def _read_lrn(buffer, start, end):
    params = {}
    names = {1: "local_size", 2: "alpha", 3: "beta", 4: "norm_region", 5: "k"}
    for number, wire_type, value in _fields(buffer, start, end):
        if number in names:
            params[names[number]] = (struct.unpack("<f", buffer[value[0]:value[1]])[0]
                                     if wire_type == 5 else value)
    return params


def _fields(buffer, start, end):
    """Yields `(field number, wire type, value)` of the message in `buffer[start:end]`.

    The value is an int for varints and `(start, end)` byte offsets for
    length-delimited and fixed-size fields.
    """
    position = start
    while position < end:
        key, position = _varint(buffer, position, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position, end)
        elif wire_type in (1, 2, 5):
            if wire_type == 2:
                length, position = _varint(buffer, position, end)
            else:
                length = 8 if wire_type == 1 else 4
            value, position = (position, position + length), position + length
        else:
            raise _CorruptFile(f"unknown wire type {wire_type} at byte {position}")
        if position > end or number == 0:
            raise _CorruptFile(f"field {number} runs past its end at byte {end}")
        yield number, wire_type, value


def _varint(buffer, position, end):
    result = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _CorruptFile(f"a number runs past its end at byte {position}")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _varints(buffer, wire_type, value):
    """The values of a repeated integer field: one varint, or a packed run of them."""
    if wire_type == 0:
        return [value]
    values, position = [], value[0]
    while position < value[1]:
        number, position = _varint(buffer, position, value[1])
        values.append(number)
    return values


def _numbers(buffer, wire_type, value, dtype):
    """A repeated float or double field: a packed run (a view, no copy) or one value."""
    start, end = value
    itemsize = np.dtype(dtype).itemsize
    if wire_type == 2 and (end - start) % itemsize:
        raise _CorruptFile(f"packed values of {end - start} bytes at byte {start}")
    if wire_type not in (2, 1 if itemsize == 8 else 5):
        raise _CorruptFile(f"wire type {wire_type} for {dtype} values at byte {start}")
    return np.frombuffer(buffer, dtype, count=(end - start) // itemsize, offset=start)


def _string(buffer, value):
    try:
        return bytes(buffer[value[0]:value[1]]).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise _CorruptFile(f"a name that is not text at byte {value}") from None
