import os
import shutil
import tempfile

import pytest

# Quiet TensorFlow's C++ start-up logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test the TensorFlow CPU kernels train.py runs with: oneDNN's, which
# TensorFlow turns on by default only on CPUs with VNNI, AVX-512 BF16
# or AMX instructions.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# The backend that runs the tests marked `backend_independent`: TensorFlow,
# whose tf.data every pipeline uses anyway.
INDEPENDENT_TESTS_BACKEND = "tensorflow"


def pytest_collection_modifyitems(config, items):
    """Tests whose subject does not depend on the Keras backend (tf.data
    pipelines, prepare, the data service, file parsers, folder listing, run
    folders, argument checks) run once, on TensorFlow, not once per backend."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == INDEPENDENT_TESTS_BACKEND:
        return
    skip = pytest.mark.skip(
        reason=f"backend-independent: runs with KERAS_BACKEND={INDEPENDENT_TESTS_BACKEND}")
    for item in items:
        if item.get_closest_marker("backend_independent"):
            item.add_marker(skip)


def _share_jax_compilations(config):
    """One JAX compilation cache for the session, this process and every
    train.py, notebook and helper process it starts: they compile the same
    programs (AlexNet at 67x67, the same batch sizes) again and again. A cache
    the user set is used as it is; ours is deleted at the end."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    config.jax_cache = tempfile.mkdtemp(prefix="keras-alexnet-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.jax_cache
    # Every program, not only those over JAX's default 1 s: a train.py run
    # compiles its evaluation steps in less, and they add up (30 s -> 13 s a run).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
    cache = getattr(config, "jax_cache", None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


def pytest_configure(config):
    """On a GPU, compute float32 as float32: the tests compare against float32
    references with float32 tolerances, and TF32 matrix units (the default
    on Ampere and later GPUs for TensorFlow, for convolutions in PyTorch and
    for matrix products in JAX) keep only 10 bits of mantissa."""
    _share_jax_compilations(config)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "torch":
        import torch

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def service():
    """A tf.data service dispatcher and two workers in this process; its address."""
    from keras_alexnet import data_service

    dispatcher = data_service.start_dispatcher(0, worker_timeout=2)
    workers = [data_service.start_worker(dispatcher.target, 0, host="localhost")
               for _ in range(2)]
    yield dispatcher.target
    for server in (*workers, dispatcher):
        server.stop()
