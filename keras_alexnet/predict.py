"""Classify photos with a pretrained AlexNet and print the top-5 labels.

    python -m keras_alexnet.predict --weights bvlc_alexnet.caffemodel cat.jpg dog.png
    python -m keras_alexnet.predict --weights alexnet-owt-7be5be79.pth --ten-crop cat.jpg
    KERAS_BACKEND=jax python -m keras_alexnet.predict --weights alexnet.weights.h5 cat.jpg

    python -m keras_alexnet.predict --weights bvlc_alexnet.caffemodel photos/

Each image (JPEG, PNG, GIF or BMP, any size; a folder stands for every image
below it, in name order) has its short side resized to
256 and its centre cropped to the model's input size; `--ten-crop` averages
the softmax over the paper's 10 crops (corners and centre, each also
flipped). Weights: a `.caffemodel`, a torchvision `.pth` / `.pt`, a
`.weights.h5` converted by `python -m keras_alexnet.convert`, or a `.keras`
model. 1000-class models are labelled with the ILSVRC-2012 classes. Every
readable image's result is printed; an unreadable one is named on stderr
and the others go on. Exit codes: 0 done, 2 bad arguments or weights, or an
image that could not be read.
"""

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def load_model(weights):
    """A model that takes pixel values in [0, 255]: `weights` with `include_preprocessing=True`,
    or a `.keras` model as saved. A leading `~` in `weights` is the home folder."""
    import keras

    from keras_alexnet import AlexNet

    if str(weights).endswith(".keras"):
        path = os.path.expanduser(os.fspath(weights))
        if not os.path.isfile(path):
            raise ValueError(f"The model file does not exist. Received: weights={weights!r}")
        return keras.saving.load_model(path, compile=False)
    return AlexNet(weights=weights, include_preprocessing=True)


def image_files(paths):
    """`(files, unreadable)`: the image files that `paths` name (files as given,
    and for a folder every JPEG, PNG, GIF or BMP file below it, hidden ones
    left out, sorted), and the names below those folders that are not valid
    UTF-8, which TensorFlow cannot open.

    Raises:
        ValueError: a path does not exist, or a folder holds no image file.
    """
    from keras_alexnet.data.folder import IMAGE_EXTENSIONS, list_files

    files, unreadable = [], []
    for path in paths:
        path = os.path.expanduser(os.fspath(path))
        if os.path.isdir(path):
            listed, undecodable = list_files(path)
            found = [file for file in listed if file.lower().endswith(IMAGE_EXTENSIONS)]
            unreadable += [os.fsdecode(name) for name in undecodable]
            if not found:
                raise ValueError(
                    f"The folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            files.extend(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist.")
    return files, unreadable


def classify(model, image_files, ten_crop=False, top=5):
    """`(file, [(label, probability), ...])` for each image, best first.

    Args:
        model: a model taking square RGB images, e.g. from `load_model`.
        image_files: paths of JPEG, PNG, GIF or BMP images.
        ten_crop: average the softmax over the paper's 10 crops.
        top: how many labels to return per image.

    The model may output probabilities or logits (a softmax is applied to
    them once; see `keras_alexnet.models.resolve_outputs`). Images are
    normalised as the model's weights expect (`EvalPreset.for_model`).

    Raises:
        ValueError: an image cannot be read (`classify_each` goes on past it).

    Examples:
        >>> model = load_model("bvlc_alexnet.caffemodel")
        >>> classify(model, ["cat.jpg"])
        [('cat.jpg', [('tabby', 0.61), ('tiger cat', 0.25), ...])]
    """
    results = []
    for path, labels, error in classify_each(model, image_files, ten_crop, top):
        if error is not None:
            raise ValueError(error)
        results.append((path, labels))
    return results


def classify_each(model, image_files, ten_crop=False, top=5):
    """Yields `(file, labels, None)` per image as `classify` returns them, or
    `(file, None, message)` for an image that cannot be read, and goes on."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_alexnet.imagenet import imagenet_class_names
    from keras_alexnet.models import resolve_outputs
    from keras_alexnet.presets import EvalPreset

    preset = EvalPreset.for_model(model, ten_crop=ten_crop)
    if len(model.output_shape) != 2:
        raise ValueError(
            "The model must output class scores, (batch, classes). "
            f"Received: output_shape={model.output_shape}"
        )
    classes = model.output_shape[-1]
    names = (imagenet_class_names() if classes == len(imagenet_class_names())
             else [str(index) for index in range(classes)])
    # Probed, as the export does: the softmax may be fc8's activation, a
    # Softmax layer or inside a wrapped model, and must be applied once.
    outputs_probabilities = resolve_outputs(model) == "probabilities"
    for path in image_files:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False)
        except tf.errors.OpError as error:
            yield path, None, f"{path} is not a readable image: {error.message}"
            continue
        crops = preset.ten_crops(image) if ten_crop else preset.preprocess(image[None])
        outputs = keras.ops.convert_to_numpy(model(crops.numpy(), training=False))
        outputs = outputs.astype("float64")
        if not outputs_probabilities:
            outputs = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
            outputs /= outputs.sum(axis=-1, keepdims=True)
        probabilities = outputs.mean(axis=0)
        best = np.argsort(-probabilities, kind="stable")[:top]
        yield path, [(names[index], float(probabilities[index])) for index in best], None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_alexnet.predict",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders: every image below them.")
    parser.add_argument("--weights", required=True,
                        help="a .caffemodel, .pth/.pt, .weights.h5 or .keras file.")
    parser.add_argument("--ten-crop", action="store_true",
                        help="average the paper's 10 crops instead of the centre crop.")
    parser.add_argument("--top", type=int, default=5, help="labels per image (5).")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1. Received: {args.top}")
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        files, unreadable = image_files(args.images)
        for name in unreadable:
            print(f"error: {name!r} is not a UTF-8 file name, which TensorFlow cannot open.",
                  file=sys.stderr)
        results = classify_each(load_model(args.weights), files, args.ten_crop, args.top)
        failed = len(unreadable)
        for path, labels, error in results:
            if error is not None:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
                continue
            print(path)
            for rank, (label, probability) in enumerate(labels, 1):
                print(f"  {rank}. {probability:7.2%}  {label}")
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if failed:
        print(f"error: {failed} of {len(files) + len(unreadable)} images could not be read "
              "(named above).",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
