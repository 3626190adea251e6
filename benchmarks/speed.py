"""Speed benchmark: tf.data posters/s, encoder plots/s and posters/s, and a head epoch with vs without caches.

    python benchmarks/speed.py [--movies 600] [--image-size 224]
Prints figures; nothing here is asserted (targets live in the issues and the README).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import genre_tf  # noqa: E402,F401


def rate(count, seconds):
    return f"{count / seconds:8.1f}/s  ({count} in {seconds:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from genre_tf.dataset import load_prepared, make_dataset
    from genre_tf.demo import DemoConfig, write_demo_catalogue
    from genre_tf.encoders import PosterEncoderConfig, TextEncoderConfig, build_poster_encoder, build_text_encoder
    from genre_tf.prepare import PrepareConfig, prepare
    from genre_tf.records import ValidationRules

    root = tempfile.mkdtemp(prefix="genre_tf_bench_")
    csv_path = write_demo_catalogue(os.path.join(root, "raw"), DemoConfig(num_movies=args.movies, poster_size=256))
    started = time.time()
    prepare(PrepareConfig(catalogue=csv_path, out=os.path.join(root, "prepared"),
                          rules=ValidationRules(image_size=args.image_size)), progress=False)
    print(f"prepare (validate, split, resize, write):  {rate(args.movies, time.time() - started)}")
    prepared = load_prepared(os.path.join(root, "prepared"))
    dataset = make_dataset(prepared, "train", 32, training=True, input_names=["plot", "poster"]).repeat()
    batches = iter(dataset)
    for _ in range(5):
        next(batches)
    started, count = time.time(), 0
    while time.time() - started < 10:
        count += len(next(batches)[1])
    print(f"tf.data posters read+decoded at {args.image_size}px: {rate(count, time.time() - started)}")

    plots = tf.constant([" ".join(["story"] * 150)] * 64)
    for seq_length in (128, 64):
        text = build_text_encoder(TextEncoderConfig(seq_length=seq_length))
        text.predict(plots[:32], verbose=0)
        started = time.time()
        text.predict(plots, batch_size=32, verbose=0)
        print(f"MiniLM embed, {seq_length} tokens:              {rate(64, time.time() - started)}")
    text = build_text_encoder(TextEncoderConfig(seq_length=128), trainable=True)
    model = keras.Model(text.input, keras.layers.Dense(10, activation="sigmoid")(text.output))
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
    labels = np.zeros((64, 10), np.float32)
    model.fit(plots[:32], labels[:32], batch_size=32, verbose=0)
    started = time.time()
    model.fit(plots, labels, batch_size=32, verbose=0)
    print(f"MiniLM fine-tune step, 128 tokens:      {rate(64, time.time() - started)}")
    for size in (args.image_size, 96):
        posters = np.random.default_rng(0).integers(0, 255, (64, size, size, 3)).astype(np.uint8)
        encoder = build_poster_encoder(PosterEncoderConfig(weights="random", image_size=size))
        encoder.predict(posters[:32], verbose=0)
        started = time.time()
        encoder.predict(posters, batch_size=32, verbose=0)
        print(f"ResNet50 features, {size}px:              {rate(64, time.time() - started)}")

    # A frozen-encoder epoch: cached embeddings cost only the head; without caches the encoder runs too.
    from genre_tf.models import ModelConfig, build_model
    from genre_tf.losses import SoftF1Loss

    n = 960
    head = build_model(ModelConfig(kind="text_frozen"), 10, text_dim=384)
    head.compile(keras.optimizers.Adam(1e-4), SoftF1Loss())
    embeddings, labels = np.random.default_rng(0).normal(size=(n, 384)).astype(np.float32), np.zeros((n, 10), np.float32)
    head.fit(embeddings[:64], labels[:64], batch_size=32, verbose=0)
    started = time.time()
    head.fit(embeddings, labels, batch_size=32, verbose=0)
    print(f"text_frozen epoch of {n}, cached:        {time.time() - started:6.1f} s  ({rate(n, time.time() - started).strip()})")
    frozen = build_text_encoder(TextEncoderConfig(seq_length=128))
    full = keras.Model(frozen.input, head(frozen.output))
    full.compile(keras.optimizers.Adam(1e-4), SoftF1Loss())
    full.fit(plots[:32], labels[:32], batch_size=32, verbose=0)
    started = time.time()
    full.fit(plots, labels[:64], batch_size=32, verbose=0)
    seconds = (time.time() - started) * n / 64
    print(f"text_frozen epoch of {n}, no cache:      {seconds:6.1f} s  (extrapolated from 64 at {64 / (seconds * 64 / n):.1f}/s)")


if __name__ == "__main__":
    main()
