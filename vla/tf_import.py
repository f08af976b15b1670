"""The one way this package imports TensorFlow: `import_tf()` (every TF user goes through it).

Kept in its own module so that `vla.rlds`, `vla.image_ops` and `vla.augment` can all use it without importing each
other, and TensorFlow itself stays out of `import vla` (LIBERO's renderer crashes in a process that has imported it).
"""

from __future__ import annotations

import contextlib
import importlib.util


def import_tf():
    """TensorFlow and tfds, with TF kept off any GPU (the GPUs belong to torch).

    Triton is imported first when installed: importing it (torch._dynamo does, e.g. via timm -> torchvision) in a
    process that already imported TensorFlow segfaults (both bundle LLVM); the other order works.
    """
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401

    import tensorflow as tf
    import tensorflow_datasets as tfds

    with contextlib.suppress(RuntimeError):  # raised once TF has initialized its devices: nothing to change then
        tf.config.set_visible_devices([], "GPU")
    return tf, tfds


def tf_available() -> bool:
    """Whether TensorFlow is installed (and not blocked), found without importing it."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["tensorflow"] is None or has no __spec__
        return False
