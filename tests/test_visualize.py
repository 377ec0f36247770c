"""keras_alexnet.visualize against NumPy references, brute force and hand-computed geometry."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import AlexNet, data
from keras_alexnet.layers import LocalResponseNormalization
from keras_alexnet.visualize import (
    deconvnet, images_at, kernel_color_saturation, kernel_groups, kernel_mosaic, layer_probe,
    nearest_neighbors, occlusion_sensitivity, plotting, receptive_field,
    strongest_feature_maps, top_activating_patches, top_predictions,
)
from tests.helpers import input_gradient

SIZE = 67  # the smallest input both AlexNets take whole: no asymmetric conv1 padding
VARIANTS = ("original", "one_weird_trick", "zfnet")


def small_alexnet(variant="original", classes=5, seed=0, size=SIZE, **kwargs):
    keras.utils.set_random_seed(seed)
    return AlexNet(variant=variant, input_shape=(size, size, 3), classes=classes,
                   initialization="he", **kwargs)


def random_images(count, seed=0, size=SIZE):
    return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype("float32")


def weights(model, name):
    return [keras.ops.convert_to_numpy(w).astype("float64") for w in model.get_layer(name).weights]


def layer_outputs(model, name, images):
    """The layer's activations from Keras itself, the reference's starting point."""
    return keras.ops.convert_to_numpy(
        keras.Model(model.inputs[0], model.get_layer(name).output)(images, training=False))


@pytest.fixture(scope="module")
def model():
    return small_alexnet()


# ------------------------------------------------------------- NumPy references


def np_conv(x, kernel, stride=1, groups=1):
    """Valid convolution, channels last, kernel (kh, kw, in / groups, out)."""
    kh, kw, group_in, out_channels = kernel.shape
    rows, cols = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((len(x), rows, cols, out_channels))
    group_out = out_channels // groups
    for g in range(groups):
        xs = x[..., g * group_in:(g + 1) * group_in]
        for i in range(kh):
            for j in range(kw):
                window = xs[:, i:i + stride * rows:stride, j:j + stride * cols:stride]
                out[..., g * group_out:(g + 1) * group_out] += (
                    window @ kernel[i, j, :, g * group_out:(g + 1) * group_out])
    return out


def np_conv_transpose(y, kernel, input_shape, stride=1, groups=1):
    """The adjoint of np_conv: out[s*r + i, s*c + j, ch] += y[r, c, f] * kernel[i, j, ch, f]."""
    kh, kw, group_in, out_channels = kernel.shape
    rows, cols = y.shape[1:3]
    out = np.zeros(input_shape)
    group_out = out_channels // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                out[:, i:i + stride * rows:stride, j:j + stride * cols:stride,
                    g * group_in:(g + 1) * group_in] += (
                    y[..., g * group_out:(g + 1) * group_out]
                    @ kernel[i, j, :, g * group_out:(g + 1) * group_out].T)
    return out


POOL_OFFSETS = [(i, j) for i in range(3) for j in range(3)]


def np_max_pool_with_switches(x):
    """3x3 stride-2 max pooling and, per output, the window offset of its maximum."""
    rows, cols = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = np.stack([x[:, i:i + 2 * rows:2, j:j + 2 * cols:2] for i, j in POOL_OFFSETS])
    return windows.max(axis=0), windows.argmax(axis=0)


def np_unpool(y, switches, input_shape):
    out = np.zeros(input_shape)
    rows, cols = y.shape[1:3]
    for offset, (i, j) in enumerate(POOL_OFFSETS):
        out[:, i:i + 2 * rows:2, j:j + 2 * cols:2] += np.where(switches == offset, y, 0.0)
    return out


def np_lrn(a, size=5, alpha=1e-4, beta=0.75, k=2.0):
    squares = np.pad(a**2, ((0, 0), (0, 0), (0, 0), (size // 2, size // 2)))
    window = sum(squares[..., offset:offset + a.shape[-1]] for offset in range(size))
    return a / (k + alpha * window) ** beta


def relu(x):
    return np.maximum(x, 0.0)


# ------------------------------------------------------------------ layer names


@pytest.mark.parametrize("call", [
    lambda m, x: deconvnet(m, x, "conv9"),
    lambda m, x: occlusion_sensitivity(m, x[0], layer="conv9"),
    lambda m, x: top_activating_patches(m, x, "conv9", 0),
    lambda m, x: receptive_field(m, "conv9"),
    lambda m, x: nearest_neighbors(m, x, x, layer="conv9"),
    lambda m, x: strongest_feature_maps(m, x, "conv9"),
    lambda m, x: kernel_mosaic(m, "conv9"),
    lambda m, x: kernel_color_saturation(m, "conv9"),
    lambda m, x: layer_probe(m, ([(x, [0])], [(x, [0])]), ["conv9"]),
], ids=["deconvnet", "occlusion", "patches", "receptive_field", "neighbors", "strongest",
        "mosaic", "saturation", "probe"])
def test_unknown_layer_names_list_the_existing_ones(model, call):
    with pytest.raises(ValueError, match="no layer named 'conv9'. Its layers are: conv1, lrn1, "
                                         "pool1, conv2, .*fc8. Received: layer='conv9'"):
        call(model, random_images(1))


def test_models_whose_layers_branch_are_refused():
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    merged = keras.layers.Add(name="add")([features, keras.layers.ReLU(name="relu")(features)])
    model = keras.Model(inputs, merged)
    with pytest.raises(ValueError, match="one chain.*'add'"):
        deconvnet(model, random_images(1), "add")


# -------------------------------------------------------------- AlexNet figure 3


def test_kernel_mosaic_tiles_each_kernel_scaled_to_its_own_range(model):
    kernels = weights(model, "conv1")[0]  # (11, 11, 3, 96)
    mosaic = kernel_mosaic(model, columns=20, spacing=2, group_spacing=5, background=0.25)
    # Two blocks (conv2's groups) of 48 kernels: 3 rows of 20 tiles 11 + 2 apart:
    # block height 3 * 13 - 2 = 37, height 2 * 37 + 5 = 79, width 20 * 13 - 2 = 258.
    assert mosaic.shape == (79, 258, 3)
    corners = {0: (0, 0), 21: (13, 13), 47: (26, 91), 48: (42, 0), 95: (68, 91)}
    for index, (top, left) in corners.items():
        kernel = kernels[..., index]
        expected = (kernel - kernel.min()) / (kernel.max() - kernel.min())
        np.testing.assert_allclose(mosaic[top:top + 11, left:left + 11], expected, atol=1e-12)
    tiles = np.zeros(mosaic.shape[:2], bool)
    for index in range(96):
        group, position = divmod(index, 48)
        top, left = 42 * group + 13 * (position // 20), 13 * (position % 20)
        tiles[top:top + 11, left:left + 11] = True
        assert mosaic[top:top + 11, left:left + 11].min() == 0.0
        assert mosaic[top:top + 11, left:left + 11].max() == 1.0
    assert tiles.sum() == 96 * 121
    assert (mosaic[~tiles] == 0.25).all()


@pytest.mark.parametrize("variant,shape", [
    ("one_weird_trick", (47, 191, 3)),  # 64 11x11 kernels: 4 rows of 16, 4 * 12 - 1 by 16 * 12 - 1
    ("zfnet", (47, 127, 3)),            # 96 7x7 kernels: 6 rows of 16, 6 * 8 - 1 by 16 * 8 - 1
])
def test_ungrouped_kernels_form_one_block(variant, shape):
    model = small_alexnet(variant)
    assert kernel_groups(model) == 1
    assert kernel_mosaic(model).shape == shape
    # Independent random weights in each colour channel: 2/3 of the energy off grey.
    (saturation,) = kernel_color_saturation(model)
    assert saturation == pytest.approx(2 / 3, abs=0.05)


def test_kernel_color_saturation_tells_grey_from_colour_kernels():
    """The paper's figure 3 made by hand: GPU 1 grey kernels; GPU 2 half purely
    chromatic (red minus green), half grey."""
    model = small_alexnet()
    kernel, bias = weights(model, "conv1")
    pattern = np.random.default_rng(0).normal(size=(11, 11, 1, 96))
    grey = np.repeat(pattern, 3, axis=2)
    chromatic = np.concatenate([pattern, -pattern, np.zeros_like(pattern)], axis=2)
    kernel = np.where(np.arange(96) >= 72, chromatic, grey)
    model.get_layer("conv1").set_weights([kernel.astype("float32"), bias.astype("float32")])
    np.testing.assert_allclose(kernel_color_saturation(model), [0.0, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="RGB input"):
        kernel_color_saturation(model, "conv2")
    with pytest.raises(ValueError, match="not a convolution"):
        kernel_mosaic(model, "pool1")


# -------------------------------------------------------------- AlexNet figure 4


def test_top_predictions_are_the_sorted_softmax():
    logits_model = small_alexnet(classes=7, classifier_activation=None)
    softmax_model = small_alexnet(classes=7)
    images = random_images(5)
    logits = keras.ops.convert_to_numpy(logits_model(images, training=False)).astype("float64")
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for classifier, batch_size in ((logits_model, 3), (softmax_model, 64)):
        classes, probabilities = top_predictions(classifier, images, k=5, batch_size=batch_size)
        assert classes.shape == (5, 5)
        for row in range(5):
            order = sorted(range(7), key=lambda c: -expected[row, c])[:5]
            np.testing.assert_array_equal(classes[row], order)
            np.testing.assert_allclose(probabilities[row], expected[row, order], rtol=1e-5)
    with pytest.raises(ValueError, match="k=8"):
        top_predictions(softmax_model, images, k=8)
    with pytest.raises(ValueError, match="classifier"):
        top_predictions(AlexNet(include_top=False, input_shape=(SIZE, SIZE, 3)), images)


@pytest.mark.parametrize("layer", ["fc7", "conv5"])
def test_nearest_neighbors_match_brute_force(model, layer):
    dataset_images = random_images(23, seed=1)
    queries = np.concatenate([random_images(2, seed=2), dataset_images[[17]]])
    labels = np.arange(23)
    batches = tf.data.Dataset.from_tensor_slices((dataset_images, labels)).batch(5)
    features = layer_outputs(model, layer, np.concatenate([queries, dataset_images]))
    features = features.reshape(len(features), -1).astype("float64")
    distances = np.linalg.norm(features[:3, None] - features[None, 3:], axis=-1)
    expected = np.argsort(distances, axis=1, kind="stable")[:, :4]

    indices, found = nearest_neighbors(model, queries, batches, layer=layer, k=4)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(found, np.take_along_axis(distances, expected, 1),
                               rtol=1e-4, atol=1e-4 * distances.max())
    assert indices[2, 0] == 17  # a query from the dataset is its own nearest neighbour
    np.testing.assert_array_equal(images_at(batches, indices), dataset_images[indices])
    # A plain list of image batches and a NumPy array are datasets too.
    as_list = [dataset_images[start:start + 7] for start in range(0, 23, 7)]
    np.testing.assert_array_equal(nearest_neighbors(model, queries, as_list, layer, 4)[0],
                                  expected)
    np.testing.assert_array_equal(
        nearest_neighbors(model, queries, dataset_images, layer, 4, batch_size=6)[0], expected)


def test_neighbour_arguments_are_checked(model):
    images = random_images(3)
    with pytest.raises(ValueError, match="fewer than `k`"):
        nearest_neighbors(model, images, images, k=4)
    with pytest.raises(ValueError, match="only 3 images"):
        images_at(images, [[0, 3]])
    with pytest.raises(ValueError, match=r"shape \(67, 67, 3\)"):
        nearest_neighbors(model, images[0], images)


# ---------------------------------------------------------- ZFNet: occlusion


@pytest.mark.parametrize("variant", ["original", "zfnet"])
def test_occlusion_map_is_unchanged_outside_the_region_the_model_sees(variant):
    """An AlexNet that sees only rows [10, 77) and columns [20, 87) of a 96x96 image."""
    inputs = keras.Input((96, 96, 3))
    cropped = keras.layers.Cropping2D(((10, 19), (20, 9)))(inputs)
    keras.utils.set_random_seed(0)
    model = AlexNet(variant=variant, input_tensor=cropped, classes=5, initialization="he")
    image = random_images(1, seed=3, size=96)[0]
    maps = occlusion_sensitivity(model, image, label=2, layer="conv5", size=12, stride=7,
                                 batch_size=50)
    corners = np.arange(0, 96 - 12 + 1, 7)
    assert maps.class_probability.shape == maps.feature_activation.shape == (13, 13)
    rows_hit = (corners < 77) & (corners + 12 > 10)
    columns_hit = (corners < 87) & (corners + 12 > 20)
    hit = rows_hit[:, None] & columns_hit[None, :]
    probability_change = np.abs(maps.class_probability - maps.unoccluded_probability)
    activation_change = np.abs(maps.feature_activation - maps.unoccluded_activation)
    # Elsewhere only float32 rounding (batches of different sizes) remains.
    assert probability_change[~hit].max() <= 1e-6
    assert activation_change[~hit].max() <= 1e-6 * abs(maps.unoccluded_activation)
    # A square wholly inside the region changes both.
    inside = (((corners >= 10) & (corners + 12 <= 77))[:, None]
              & ((corners >= 20) & (corners + 12 <= 87))[None, :])
    assert (activation_change[inside] > 2e-5 * abs(maps.unoccluded_activation)).all()
    assert (probability_change[inside] > 1e-5).all()

    # Built from input_tensor, the model takes a list of one input.
    probabilities = keras.ops.convert_to_numpy(model([image[None]], training=False))[0]
    assert maps.unoccluded_probability == pytest.approx(probabilities[2], rel=1e-5)
    strongest = layer_outputs(model, "conv5", image[None])[0].max(axis=(0, 1)).argmax()
    assert maps.feature_map == strongest
    assert (maps.predicted_class[~hit] == probabilities.argmax()).all()


def test_occlusion_arguments_are_checked(model):
    image = random_images(1)[0]
    with pytest.raises(ValueError, match="size=68"):
        occlusion_sensitivity(model, image, size=68)
    with pytest.raises(ValueError, match="label=5"):
        occlusion_sensitivity(model, image, label=5)
    with pytest.raises(ValueError, match="feature_map=256"):
        occlusion_sensitivity(model, image, feature_map=256)


# ----------------------------------------------------------- ZFNet: deconvnet


# Per variant: an input size, conv1's stride and its zero padding (before, after).
CONV1_GEOMETRY = {
    "original": (SIZE, 4, (0, 0)),
    "one_weird_trick": (SIZE, 4, (2, 2)),  # torchvision pads conv1 by 2
    "zfnet": (68, 2, (0, 1)),  # 1 + ceil((68 - 7) / 2) = 31: the last window overhangs
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("position", ["all", "strongest"])
def test_deconvnet_of_conv1_is_the_transposed_convolution_of_its_kernel(variant, position):
    size, stride, (before, after) = CONV1_GEOMETRY[variant]
    model = small_alexnet(variant, size=size)
    images = random_images(2, seed=4, size=size)
    kernel, bias = weights(model, "conv1")
    padded = np.pad(images.astype("float64"), ((0, 0), (before, after), (before, after), (0, 0)))
    activations = relu(np_conv(padded, kernel, stride=stride) + bias)
    channel = 7
    kept = np.zeros_like(activations[..., channel])
    for index, values in enumerate(activations[..., channel]):
        if position == "all":
            kept[index] = values
        else:
            strongest = np.unravel_index(values.argmax(), values.shape)
            kept[index][strongest] = values[strongest]
    signal = np.zeros_like(activations)
    signal[..., channel] = kept
    expected = np_conv_transpose(signal, kernel, padded.shape, stride=stride)
    expected = expected[:, before:before + size, before:before + size]

    projection = deconvnet(model, images, "conv1", feature_map=channel, position=position)
    assert projection.shape == images.shape
    np.testing.assert_allclose(projection, expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["deconvnet", "guided_backpropagation"])
def test_deconvnet_of_conv2_goes_through_groups_lrn_and_switches(method):
    """conv2 of the original AlexNet: grouped transposed convolution, unpooling
    with pool1's switches, LRN skipped (deconvnet) or differentiated (guided
    backpropagation), rectification, conv1 transposed."""
    model = small_alexnet()
    kernel1, bias1 = weights(model, "conv1")
    # Positive conv1 outputs: no all-zero pooling windows, so no tied switches.
    model.get_layer("conv1").set_weights([kernel1.astype("float32"),
                                          np.full(96, 5.0, "float32")])
    kernel2, bias2 = weights(model, "conv2")
    images = random_images(2, seed=5)
    x = images.astype("float64")
    a1 = relu(np_conv(x, kernel1, stride=4) + 5.0)
    pooled, switches = np_max_pool_with_switches(np_lrn(a1))
    padded_shape = (2, pooled.shape[1] + 4, pooled.shape[2] + 4, 96)
    a2 = relu(np_conv(np.pad(pooled, ((0, 0), (2, 2), (2, 2), (0, 0))), kernel2, groups=2) + bias2)
    channel = 200  # the second group: sees conv1's kernels 48-95 only
    signal = np.zeros_like(a2)
    signal[..., channel] = a2[..., channel]

    signal = relu(signal)
    if method == "guided_backpropagation":
        signal = signal * (a2 > 0)
    signal = np_conv_transpose(signal, kernel2, padded_shape, groups=2)[:, 2:-2, 2:-2]
    signal = np_unpool(signal, switches, a1.shape)
    assert not signal[..., :48].any() and signal[..., 48:].any()
    if method == "guided_backpropagation":
        lrn = LocalResponseNormalization()
        signal = input_gradient(lrn, a1.astype("float32"), signal.astype("float32"))
        signal = signal.astype("float64") * (a1 > 0)
    expected = np_conv_transpose(relu(signal), kernel1, x.shape, stride=4)

    projection = deconvnet(model, images, "conv2", feature_map=channel, position="all",
                           method=method)
    np.testing.assert_allclose(projection, expected, atol=1e-4 * np.abs(expected).max())


def test_deconvnet_reaches_the_pixels_from_every_layer_of_every_variant():
    for variant in VARIANTS:
        model = small_alexnet(variant)
        images = random_images(2, seed=6)
        for layer in ("conv5", "pool5", "fc7"):
            projection = deconvnet(model, images, layer)
            assert projection.shape == images.shape
            assert np.isfinite(projection).all() and np.abs(projection).max() > 0, layer
        # The strongest feature map of each image is projected by default.
        strongest = strongest_feature_maps(model, images, "conv5")
        assert strongest.tolist() == [
            layer_outputs(model, "conv5", images)[index].max(axis=(0, 1)).argmax()
            for index in range(2)]
        np.testing.assert_allclose(deconvnet(model, images, "conv5"),
                                   deconvnet(model, images, "conv5", strongest))
    with pytest.raises(ValueError, match="activation 'softmax'"):
        deconvnet(model, images, "fc8")
    with pytest.raises(ValueError, match="method='deconv'"):
        deconvnet(model, images, "conv5", method="deconv")
    for wrong in (256, [1, 2, 3], 1.5):
        with pytest.raises(ValueError, match=re.escape(f"feature_map={wrong}")):
            deconvnet(model, images, "conv5", feature_map=wrong)


# ----------------------------------------------------- ZFNet: receptive fields, top 9


# Hand-computed from the paper's layers (REFERENCE.md): (size, stride, offset).
ALEXNET_RECEPTIVE_FIELDS = {
    "conv1": (11, 4, 0), "pool1": (19, 8, 0), "conv2": (51, 8, -16), "pool2": (67, 16, -16),
    "conv3": (99, 16, -32), "conv4": (131, 16, -48), "conv5": (163, 16, -64),
    "pool5": (195, 32, -64),
}


def test_receptive_fields_match_hand_computed_geometry():
    original = AlexNet(include_top=False)
    padded = AlexNet(include_top=False, input_shape=(224, 224, 3))
    trick = AlexNet(variant="one_weird_trick", include_top=False)
    for layer, (size, stride, offset) in ALEXNET_RECEPTIVE_FIELDS.items():
        field = receptive_field(original, layer)
        assert (field.size, field.stride, field.offset) == ((size,) * 2, (stride,) * 2,
                                                           (offset,) * 2), layer
        # 224 is zero-padded 1 before conv1; one_weird_trick pads 2.
        assert receptive_field(padded, layer).offset == (offset - 1,) * 2
        assert receptive_field(trick, layer).offset == (offset - 2,) * 2
    with pytest.raises(ValueError, match="no spatial positions"):
        receptive_field(small_alexnet(), "fc6")


# Hand-computed for ZFNet: 7x7/2 conv1, 3x3/2 pool1, 5x5/2 conv2, 3x3/2 pool2, then
# 3x3 convolutions padded 1 (the offset moves back one stride each) and pool5. Its
# paddings are all after the image, so they move no offset.
ZFNET_RECEPTIVE_FIELDS = {
    "conv1": (7, 2, 0), "pool1": (11, 4, 0), "lrn1": (11, 4, 0), "conv2": (27, 8, 0),
    "pool2": (43, 16, 0), "conv3": (75, 16, -16), "conv4": (107, 16, -32),
    "conv5": (139, 16, -48), "pool5": (171, 32, -48),
}


def test_zfnet_receptive_fields_match_hand_computed_geometry():
    for shape in ((224, 224, 3), (67, 67, 3)):
        model = AlexNet(variant="zfnet", include_top=False, input_shape=shape)
        for layer, (size, stride, offset) in ZFNET_RECEPTIVE_FIELDS.items():
            field = receptive_field(model, layer)
            assert (field.size, field.stride, field.offset) == (
                (size,) * 2, (stride,) * 2, (offset,) * 2), (shape, layer)


@pytest.mark.parametrize("variant,box", [
    ("original", (0, -16, 99, 83)),  # 99 pixels every 16 from -32
    ("zfnet", (16, 0, 91, 75)),  # 75 pixels every 16 from -16
])
def test_pixels_outside_the_receptive_field_do_not_change_the_unit(variant, box):
    model = small_alexnet(variant)
    field = receptive_field(model, "conv3")
    top, left, bottom, right = field.box(2, 1)
    assert (top, left, bottom, right) == box
    image = random_images(1, seed=7)
    outside = image.copy()
    mask = np.ones((SIZE, SIZE), bool)
    mask[max(top, 0):bottom, max(left, 0):right] = False
    outside[0][mask] = 10.0
    unit = lambda x: layer_outputs(model, "conv3", x)[0, 2, 1]  # noqa: E731
    np.testing.assert_allclose(unit(outside), unit(image), rtol=1e-5, atol=1e-6)
    # Deeper units see the whole 67x67 image: fields grow past it.
    assert receptive_field(model, "conv5").size[0] > 2 * SIZE


def test_top_activating_patches_match_brute_force(model):
    images = random_images(20, seed=8)
    batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(20))).batch(6)
    channel = 11
    maps = layer_outputs(model, "conv2", images)[..., channel].reshape(20, -1)
    strongest = maps.max(axis=1)
    order = sorted(range(20), key=lambda index: (-strongest[index], index))[:9]

    top = top_activating_patches(model, batches, "conv2", channel)
    np.testing.assert_array_equal(top.indices, order)
    np.testing.assert_allclose(top.activations, strongest[order], rtol=1e-6)
    padded = np.pad(images, ((0, 0), (16, 51), (16, 51), (0, 0)))  # fill 0 outside
    for rank, index in enumerate(order):
        row, column = divmod(int(maps[index].argmax()), 7)  # conv2 is 7x7 at 67
        assert tuple(top.positions[rank]) == (row, column)
        # conv2 at 67: a 51-pixel field every 8 pixels from -16 (hand-computed).
        top_edge, left_edge = 8 * row - 16, 8 * column - 16
        assert tuple(top.boxes[rank]) == (max(top_edge, 0), max(left_edge, 0),
                                          min(top_edge + 51, SIZE), min(left_edge + 51, SIZE))
        np.testing.assert_array_equal(
            top.patches[rank],
            padded[index, top_edge + 16:top_edge + 67, left_edge + 16:left_edge + 67])
    with pytest.raises(ValueError, match="feature_map=256"):
        top_activating_patches(model, batches, "conv2", 256)
    with pytest.raises(ValueError, match="fewer than `count`"):
        top_activating_patches(model, images[:3], "conv2", 0)


# ---------------------------------------------------------- ZFNet: layer probe


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return data.default_dataset(root=tmp_path_factory.mktemp("shapes"))


@pytest.mark.parametrize("variant", ["original", "zfnet"])
def test_layer_probe_beats_chance_on_the_embedded_data(shapes, variant):
    """Random convolutional features already separate the shape classes."""
    source = shapes
    model = small_alexnet(variant, classes=10)
    accuracy = layer_probe(model, source, ["conv1", "conv3", "conv5"])
    assert list(accuracy) == ["conv1", "conv3", "conv5"]
    # 120 validation images in 10 classes: chance is 12 right, 30 is p < 1e-6.
    for layer, value in accuracy.items():
        assert value >= 0.25, (layer, accuracy)


def test_layer_probe_normalises_a_source_once(shapes):
    """A model that normalises its inputs itself gets pixel values from a Source."""
    from keras_alexnet.visualize.probe import _train_and_validation

    for include_preprocessing, scale in ((False, (0, 4)), (True, (100, 256))):
        model = small_alexnet(include_preprocessing=include_preprocessing)
        for split in _train_and_validation(model, shapes, batch_size=8):
            images, _ = next(iter(split))
            assert scale[0] < np.abs(np.asarray(images)).max() < scale[1]


def test_layer_probe_is_ridge_regression_on_pooled_features(model):
    """Against a direct least-squares solution on all features at once."""
    rng = np.random.default_rng(9)
    train_images, validation_images = random_images(40, seed=10), random_images(20, seed=11)
    train_labels, validation_labels = rng.integers(0, 3, 40), rng.integers(0, 3, 20)
    l2 = 0.1
    train = [(train_images[start:start + 20], train_labels[start:start + 20])
             for start in range(0, 40, 20)]
    accuracy = layer_probe(model, (train, [(validation_images, validation_labels)]),
                           ["conv5", "fc8"], l2=l2)

    for layer in ("conv5", "fc8"):
        def pooled(images):
            outputs = layer_outputs(model, layer, images).astype("float64")
            return outputs.mean(axis=(1, 2)) if outputs.ndim == 4 else outputs

        features, validation_features = pooled(train_images), pooled(validation_images)
        std = features.std(axis=0)
        kept = std > 1e-6 * np.sqrt((features**2).mean(axis=0) + 1e-300)
        mean = features.mean(axis=0)
        standardised = (features[:, kept] - mean[kept]) / std[kept]
        targets = np.eye(3)[train_labels]
        design = np.concatenate([np.hstack([standardised, np.ones((40, 1))]),
                                 np.hstack([np.sqrt(l2 * 40) * np.eye(kept.sum()),
                                            np.zeros((kept.sum(), 1))])])
        solution = np.linalg.lstsq(
            design, np.concatenate([targets, np.zeros((kept.sum(), 3))]), rcond=None)[0]
        scores = np.hstack([(validation_features[:, kept] - mean[kept]) / std[kept],
                            np.ones((20, 1))]) @ solution
        assert accuracy[layer] == pytest.approx(np.mean(scores.argmax(1) == validation_labels))


def test_layer_probe_arguments_are_checked(model):
    images = random_images(2)
    for labels in (None, [0.0, 1.0], [0, -1], [0]):
        split = [images] if labels is None else [(images, labels)]
        with pytest.raises(ValueError, match="integer label >= 0 per image in the training"):
            layer_probe(model, (split, split), ["conv1"])
    with pytest.raises(ValueError, match="Source or a"):
        layer_probe(model, images, ["conv1"])
    with pytest.raises(ValueError, match="layers='conv1'"):
        layer_probe(model, ([(images, [0, 1])],) * 2, "conv1")


# ------------------------------------------------------------------- plotting


def test_plots_draw_every_panel(model, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    images = random_images(2, seed=12)
    classes, probabilities = top_predictions(model, images, k=3)
    neighbors = images_at(images, [[1, 0], [0, 1]])
    figure = plotting.plot_predictions(images, classes, probabilities, list("abcde"), neighbors)
    assert len(figure.axes) == 2 * 4
    assert [text.get_text() for text in figure.axes[1].texts] == [
        "abcde"[index] for index in classes[0]]
    figure = plotting.plot_kernels(model)
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), kernel_mosaic(model))
    # Drawn, the mosaic fills the figure's width: no margins beside it.
    figure.canvas.draw()
    left, _, right, _ = figure.axes[0].get_window_extent().extents
    assert (left, right) == pytest.approx((0, figure.bbox.width), abs=1)
    maps = occlusion_sensitivity(model, images[0], size=20, stride=10)
    assert len(plotting.plot_occlusion(images[0], maps).axes[0].images) == 1
    figure = plotting.plot_images(images[:1].repeat(5, axis=0), columns=3)
    assert sum(bool(axis.images) for axis in figure.axes) == 5


def test_import_loads_neither_matplotlib_nor_another_framework():
    script = ("import sys, keras; before = set(sys.modules); import keras_alexnet.visualize; "
              "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
              "assert 'matplotlib' not in new, new; "
              "assert keras.backend.backend() == 'tensorflow' or 'tensorflow' not in new, new")
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
