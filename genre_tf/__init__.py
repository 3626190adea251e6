"""genre_tf: multi-label movie genre prediction from plot summaries and posters.

The folders are the stages: data/ (catalogues to prepared datasets), nets/ (encoders and models), train/,
evaluate/, serve/ (the SavedModel and predict), bench/; config, limits, files and run_dir are shared by all.
"""
import os

# TF-Hub's KerasLayer only works with Keras 2 (tf-keras); this must be set before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
