"""Keras compute-dtype policies: the one way genre_tf builds layers in float16 or bfloat16."""
import contextlib

import tf_keras as keras

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def precision_of(layer) -> str:
    """The precision (a POLICIES key) a layer was built under."""
    return {policy: precision for precision, policy in POLICIES.items()}[layer.dtype_policy.name]


@contextlib.contextmanager
def keras_policy(precision: str):
    """Build layers computing in `precision` (float32, or bfloat16/float16 over float32 weights), then give the
    global policy back. An unknown precision is a ValueError."""
    if precision not in POLICIES:
        raise ValueError(f"precision must be one of {', '.join(POLICIES)}, got {precision!r}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
