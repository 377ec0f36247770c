"""bvlc_alexnet as Caffe stores and runs it, for the tests, independent of keras_alexnet.

`write_caffemodel` encodes a `NetParameter` with its own protocol-buffer
writer (field numbers from Caffe's `caffe.proto`), in the published V1
layout (`layers`, enum types, legacy 4-D blob dims) or the newer V2 layout
(`layer`, string types, `BlobShape`), with float or double values.
`caffe_forward` runs the network with Caffe's semantics in
`torch.nn.functional`: BGR input minus the mean, grouped convolutions,
Caffe's LRN (alpha divided by local_size, k = 1), max pooling rounded up as
Caffe does, fc6 on pool5 flattened as (C, H, W).
"""

import struct

import numpy as np

# bvlc_alexnet's mean, BGR (the ILSVRC-2012 mean image's channel means).
MEAN_BGR = (104.00699, 116.66877, 122.67891)
# Channels-first blob shapes (out, in / groups, kh, kw) and (out, in).
CONV_SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
               "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}
CONV_SETTINGS = {"conv1": dict(stride=4, pad=0, group=1), "conv2": dict(stride=1, pad=2, group=2),
                 "conv3": dict(stride=1, pad=1, group=1), "conv4": dict(stride=1, pad=1, group=2),
                 "conv5": dict(stride=1, pad=1, group=2)}
LRN = dict(local_size=5, alpha=1e-4, beta=0.75)  # bvlc_alexnet's prototxt; k defaults to 1

# V1LayerParameter.LayerType enum values.
V1_TYPES = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17,
            "InnerProduct": 14, "Dropout": 6, "SoftmaxWithLoss": 21}


def random_weights(seed, classes=1000, pool5_size=6):
    """He-scaled random weights with bvlc_alexnet's shapes, channels-first, conv1 BGR."""
    rng = np.random.default_rng(seed)
    shapes = dict(CONV_SHAPES, fc6=(4096, 256 * pool5_size**2), fc7=(4096, 4096),
                  fc8=(classes, 4096))
    weights = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        kernel = rng.normal(0, np.sqrt(2 / fan_in), shape).astype("float32")
        weights[name] = (kernel, rng.normal(0, 0.1, shape[0]).astype("float32"))
    return weights


def peaked(weights, images):
    """Scales fc8 so the softmax on `images` is far from uniform (logits' std 4):
    then a 1e-4 tolerance on probabilities tells a wrong mapping from a right one."""
    scale = 4.0 / caffe_forward(weights, images)["logits"].std()
    return {**weights, "fc8": tuple(value * scale for value in weights["fc8"])}


def bvlc_alexnet_layers(weights, lrn=LRN):
    """The layers of bvlc_alexnet's train_val net, in order, as dicts to edit and write."""
    def conv(name, bottom):
        kernel, bias = weights[name]
        return [dict(name=name, type="Convolution", bottom=bottom, blobs=[kernel, bias],
                     convolution=dict(num_output=kernel.shape[0], kernel_size=kernel.shape[2],
                                      **CONV_SETTINGS[name])),
                dict(name="relu" + name[-1], type="ReLU", bottom=name)]

    def pool(name, bottom):
        return [dict(name=name, type="Pooling", bottom=bottom,
                     pooling=dict(pool=0, kernel_size=3, stride=2))]

    def fc(name, bottom, relu=True):
        kernel, bias = weights[name]
        layers = [dict(name=name, type="InnerProduct", bottom=bottom, blobs=[kernel, bias],
                       inner_product=dict(num_output=kernel.shape[0]))]
        if relu:
            layers += [dict(name="relu" + name[-1], type="ReLU", bottom=name),
                       dict(name="drop" + name[-1], type="Dropout", bottom=name)]
        return layers

    def norm(name, bottom):
        return [dict(name=name, type="LRN", bottom=bottom, lrn=dict(lrn))]

    return [dict(name="data", type="Data"),
            *conv("conv1", "data"), *norm("norm1", "conv1"), *pool("pool1", "norm1"),
            *conv("conv2", "pool1"), *norm("norm2", "conv2"), *pool("pool2", "norm2"),
            *conv("conv3", "pool2"), *conv("conv4", "conv3"), *conv("conv5", "conv4"),
            *pool("pool5", "conv5"), *fc("fc6", "pool5"), *fc("fc7", "fc6"),
            *fc("fc8", "fc7", relu=False),
            dict(name="loss", type="SoftmaxWithLoss", bottom="fc8")]


def write_caffemodel(path, layers, version="v1", double=False):
    """Writes `layers` (see `bvlc_alexnet_layers`) as a NetParameter file."""
    net = _string(1, "AlexNet")
    for layer in layers:
        net += _message(2 if version == "v1" else 100, _layer(layer, version, double))
    with open(path, "wb") as handle:
        handle.write(net)


def _layer(layer, version, double):
    v1 = version == "v1"
    fields = dict(name=4, type=5, bottom=2, top=3, blobs=6, convolution=10, lrn=18,
                  pooling=19, inner_product=17) if v1 else dict(
        name=1, type=2, bottom=3, top=4, blobs=7, convolution=106, lrn=118, pooling=121,
        inner_product=117)
    encoded = _string(fields["name"], layer["name"])
    encoded += (_varint_field(fields["type"], V1_TYPES[layer["type"]]) if v1
                else _string(fields["type"], layer["type"]))
    if "bottom" in layer:
        encoded += _string(fields["bottom"], layer["bottom"])
    encoded += _string(fields["top"], layer["name"])
    for blob in layer.get("blobs", []):
        encoded += _message(fields["blobs"], _blob(blob, v1, double))
    if "convolution" in layer:
        settings = layer["convolution"]
        encoded += _message(fields["convolution"], b"".join(
            _varint_field(number, settings[key]) for number, key in
            [(1, "num_output"), (3, "pad"), (4, "kernel_size"), (5, "group"), (6, "stride")]
            if key in settings))
    if "inner_product" in layer:
        encoded += _message(fields["inner_product"],
                            _varint_field(1, layer["inner_product"]["num_output"]))
    if "lrn" in layer:
        settings = layer["lrn"]
        encoded += _message(fields["lrn"], _varint_field(1, settings["local_size"])
                            + _float_field(2, settings["alpha"])
                            + _float_field(3, settings["beta"])
                            + (_float_field(5, settings["k"]) if "k" in settings else b""))
    if "pooling" in layer:
        settings = layer["pooling"]
        encoded += _message(fields["pooling"], b"".join(
            _varint_field(number, settings[key])
            for number, key in [(1, "pool"), (2, "kernel_size"), (3, "stride")]))
    return encoded


def _blob(array, v1, double):
    if v1:  # legacy dims, as published: (1, 1, out, in) for fc kernels, (1, 1, 1, out) biases
        dims = (1,) * (4 - array.ndim) + array.shape
        encoded = b"".join(_varint_field(number, dim) for number, dim in zip((1, 2, 3, 4), dims))
    else:
        encoded = _message(7, _message(1, b"".join(_varint(dim) for dim in array.shape)))
    values = np.ascontiguousarray(array, "<f8" if double else "<f4").tobytes()
    return encoded + _message(8 if double else 5, values)


def _varint(value):
    encoded = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _varint_field(number, value):
    return _varint(number << 3) + _varint(value)


def _float_field(number, value):
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _message(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number, text):
    return _message(number, text.encode())


def caffe_forward(weights, images, lrn=LRN):
    """Caffe's bvlc_alexnet on RGB pixel values `(N, H, W, 3)` in [0, 255].

    Returns `{"pool5": (N, H, W, C), "logits": ..., "probabilities": ...}`.
    """
    import torch
    import torch.nn.functional as F

    w = {name: [torch.from_numpy(np.asarray(value, "float32")) for value in pair]
         for name, pair in weights.items()}
    x = torch.from_numpy(np.ascontiguousarray(images[..., ::-1], "float32"))  # RGB -> BGR
    x = (x - torch.tensor(MEAN_BGR)).permute(0, 3, 1, 2)

    def lrn_layer(value):
        return F.local_response_norm(value, lrn["local_size"], alpha=lrn["alpha"],
                                      beta=lrn["beta"], k=lrn.get("k", 1.0))

    def pool(value):
        return F.max_pool2d(value, 3, 2, ceil_mode=True)

    def conv(value, name):
        settings = CONV_SETTINGS[name]
        return F.relu(F.conv2d(value, *w[name], stride=settings["stride"],
                               padding=settings["pad"], groups=settings["group"]))

    with torch.no_grad():
        x = pool(lrn_layer(conv(x, "conv1")))
        x = pool(lrn_layer(conv(x, "conv2")))
        x = pool(conv(conv(conv(x, "conv3"), "conv4"), "conv5"))
        pool5 = x.permute(0, 2, 3, 1).numpy()
        x = F.relu(F.linear(x.flatten(1), *w["fc6"]))
        x = F.relu(F.linear(x, *w["fc7"]))
        logits = F.linear(x, *w["fc8"])
        probabilities = F.softmax(logits, dim=1)
    return {"pool5": pool5, "logits": logits.numpy(), "probabilities": probabilities.numpy()}
