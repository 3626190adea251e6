"""Distil the offline MPNet into a student that keeps some of its layers, written as a TF-Hub encoder/preprocessor pair.

    python -m genre_tf.train.distill PREPARED --out students/mpnet-6 [--layers 6] [--epochs 1]

The student is MPNet with `layers` of its 12 transformer blocks, evenly spaced from the first (6 of 12: 0, 2, 4, 6,
8, 10, as sentence-transformers' layer-reduction distillation keeps them), initialised from them, and trained to
reproduce MPNet's mean-pooled plot embeddings (the frozen text features genre_tf trains on) with a mean squared
error. It learns from the training plots of a prepared dataset only (a dataset prepared with extra_train= brings its
text-only plots too); dev's plots measure how close it came, test's teach and measure nothing. MPNet's embeddings
come from the feature store, computed there first if missing (as training would). The blocks are trained; the
embeddings and MPNet's relative position bias stay as they are. Batches hold plots of similar length, padded to their
longest (little padding to train on). Training is checkpointed beside --out every 50 batches and at each epoch's end,
so a killed run resumes at its last checkpoint.

Use the student as any TF-Hub text encoder: `text.encoder=OUT/encoder text.preprocessor=OUT/preprocessor`.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads

STUDENT_FILE = "distill.json"


@dataclasses.dataclass
class DistillConfig:
    """How the student is made and trained."""

    layers: int = 6               # transformer blocks kept of the teacher's
    epochs: int = 1               # passes over the training plots
    batch_size: int = 32          # plots a step, of similar length
    learning_rate: float = 1e-4   # Adam, decayed linearly to 0 over the run (sentence-transformers' distillation: 1e-4)
    seq_length: int = 128         # tokens a plot, as the teacher's features were computed
    seed: int = 0                 # the order of the batches


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher's blocks a student keeps: evenly spaced from the first (12 -> 6: 0, 2, 4, 6, 8, 10)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student keeps 1 to {teacher_layers} layers, not {student_layers}")
    return [index * teacher_layers // student_layers for index in range(student_layers)]


def build_student(teacher, shape, layers: int):
    """A BERT of `shape` with `layers` blocks holding the teacher's kept blocks' weights, and its other layers'."""
    from genre_tf.nets.bert import TransformerBlock, build_bert_encoder

    student = build_bert_encoder(dataclasses.replace(shape, num_layers=layers))
    kept = kept_layers(shape.num_layers, layers)
    for layer in student.layers:
        if isinstance(layer, TransformerBlock):
            source = teacher.get_layer(f"transformer_{kept[int(layer.name.rsplit('_', 1)[1])]}")
        elif layer.weights:
            source = teacher.get_layer(layer.name)
        else:
            continue
        layer.set_weights(source.get_weights())
    return student


def tokenize(preprocessor_handle: str, plots: list[str], batch_size: int = 256):
    """(input_word_ids, input_mask) of every plot as the preprocessor packs them: int32 [plots, seq_length]."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    preprocessor = hub.load(preprocessor_handle)
    words, masks = [], []
    for start in range(0, len(plots), batch_size):
        ids = preprocessor(tf.constant(plots[start:start + batch_size]))
        words.append(ids["input_word_ids"].numpy())
        masks.append(ids["input_mask"].numpy())
    return np.concatenate(words).astype(np.int32), np.concatenate(masks).astype(np.int32)


def length_batches(mask, batch_size: int) -> list:
    """Row indices in batches of plots of similar length (sorted by where their tokens end)."""
    import numpy as np

    from genre_tf.nets.encoders import token_ends

    order = np.argsort(token_ends(mask).numpy(), kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def batch_inputs(words, mask, rows) -> dict:
    """The encoder's inputs for `rows`, cut after their longest plot."""
    import tensorflow as tf

    from genre_tf.nets.encoders import token_ends

    length = max(int(tf.reduce_max(token_ends(mask[rows]))), 1)
    return {"input_word_ids": tf.constant(words[rows, :length]), "input_mask": tf.constant(mask[rows, :length]),
            "input_type_ids": tf.zeros((len(rows), length), tf.int32)}


def embed(encoder, words, mask, batch_size: int = 64):
    """Mean-pooled embeddings of every row, in row order (batched by length)."""
    import numpy as np

    from genre_tf.nets.bert import masked_mean

    out = np.zeros((len(words), encoder.output["sequence_output"].shape[-1]), np.float32)
    for rows in length_batches(mask, batch_size):
        inputs = batch_inputs(words, mask, rows)
        out[rows] = masked_mean(encoder(inputs, training=False)["sequence_output"], inputs["input_mask"]).numpy()
    return out


def make_train_step(student, optimizer):
    """One optimisation step: the mean squared error between the student's mean-pooled embeddings and the targets."""
    import tensorflow as tf

    from genre_tf.nets.bert import TransformerBlock, masked_mean

    variables = [v for layer in student.layers if isinstance(layer, TransformerBlock) for v in layer.trainable_weights]
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[{"input_word_ids": spec, "input_mask": spec, "input_type_ids": spec},
                                  tf.TensorSpec([None, None], tf.float32)], reduce_retracing=True)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            vectors = masked_mean(student(inputs, training=True)["sequence_output"], inputs["input_mask"])
            loss = tf.reduce_mean(tf.square(vectors - targets))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def fidelity(student_vectors, teacher_vectors) -> dict:
    """How close the student's embeddings are to the teacher's: mean squared error and mean cosine similarity."""
    import numpy as np

    cosine = (student_vectors * teacher_vectors).sum(1) / np.maximum(
        np.linalg.norm(student_vectors, axis=1) * np.linalg.norm(teacher_vectors, axis=1), 1e-12)
    return {"mse": float(np.mean((student_vectors - teacher_vectors) ** 2)), "cosine": float(cosine.mean())}


SAVE_EVERY = 50  # batches between checkpoints inside an epoch (1,600 plots: 2-3 minutes of a student here)


def train_student(student, words, mask, targets, config: DistillConfig, checkpoint_dir: str = "",
                  report=print, save_every: int = SAVE_EVERY) -> tuple[list[float], float]:
    """Train the student's blocks for config.epochs over the rows, checkpointed every `save_every` batches and at each
    epoch's end (a killed run resumes at its last checkpoint: the epochs' batch orders are fixed by the seed);
    (the mean loss of every epoch, the seconds spent training), a killed process's batches included."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    batches = length_batches(mask, config.batch_size)
    total = max(config.epochs * len(batches), 1)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.PolynomialDecay(config.learning_rate, total, 0.0))
    step = make_train_step(student, optimizer)
    # where training stands (epoch, batches done in it, their summed loss), each finished epoch's mean loss and the
    # seconds trained so far: checkpointed with the weights
    epoch, done_in_epoch = (tf.Variable(0, dtype=tf.int64, trainable=False) for _ in range(2))
    loss_sum, seconds = (tf.Variable(0.0, dtype=tf.float64, trainable=False) for _ in range(2))
    losses = tf.Variable(tf.zeros([config.epochs], tf.float64), trainable=False)
    manager = None
    if checkpoint_dir:
        checkpoint = tf.train.Checkpoint(student=student, optimizer=optimizer, epoch=epoch, losses=losses,
                                         seconds=seconds, done_in_epoch=done_in_epoch, loss_sum=loss_sum)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            report(f"resuming after epoch {int(epoch.numpy())}, batch {int(done_in_epoch.numpy())} of the next, "
                   f"from {manager.latest_checkpoint}")
    mark = time.monotonic()

    def save():
        nonlocal mark
        seconds.assign_add(time.monotonic() - mark)
        mark = time.monotonic()
        if manager:
            manager.save()

    while int(epoch.numpy()) < config.epochs:
        order = np.random.default_rng([config.seed, int(epoch.numpy())]).permutation(len(batches))
        skipped, started, recent = int(done_in_epoch.numpy()), time.monotonic(), []
        for done, index in enumerate(order[skipped:], skipped + 1):
            rows = batches[index]
            recent = [*recent[-19:], float(step(batch_inputs(words, mask, rows), tf.constant(targets[rows])))]
            loss_sum.assign_add(recent[-1])
            done_in_epoch.assign(done)
            if done % 20 == 0 or done == len(order):
                rate = (done - skipped) * config.batch_size / (time.monotonic() - started)
                report(f"epoch {int(epoch.numpy()) + 1}/{config.epochs}: {done}/{len(order)} batches, loss "
                       f"{np.mean(recent):.5f}, {rate:.1f} plots/s, "
                       f"{(len(order) - done) * config.batch_size / rate / 60:.1f} min left in the epoch")
            if done % save_every == 0 and done < len(order):
                save()
        losses[int(epoch.numpy())].assign(loss_sum / max(len(order), 1))
        epoch.assign_add(1)
        done_in_epoch.assign(0)
        loss_sum.assign(0.0)
        save()
    return losses.numpy().tolist(), float(seconds.numpy())


def save_student(student, vocab_path: str, out: str, config: DistillConfig, record: dict) -> None:
    """out/encoder and out/preprocessor (TF-Hub format, MPNet's tokens) and out/distill.json, replacing out whole."""
    from genre_tf.files import atomic_path, write_json
    from genre_tf.nets.bert import MPNET_TOKENS, save_hub_encoder, save_hub_preprocessor

    with atomic_path(out) as staging:
        os.makedirs(staging)
        save_hub_encoder(student, os.path.join(staging, "encoder"))
        save_hub_preprocessor(vocab_path, os.path.join(staging, "preprocessor"), config.seq_length,
                              special=MPNET_TOKENS)
        write_json(os.path.join(staging, STUDENT_FILE), record)


def read_record(out: str) -> dict:
    """What a distillation wrote about its student (out/distill.json)."""
    from genre_tf.files import read_json

    return read_json(os.path.join(out, STUDENT_FILE))


def teacher_embeddings(prepared, config: DistillConfig):
    """MPNet's stored mean-pooled embeddings of the dataset's train and dev movies (computed first if missing)."""
    import functools

    import numpy as np

    from genre_tf.config import TextEncoderConfig
    from genre_tf.data.dataset import PLOT, PLOT_EMBEDDING
    from genre_tf.data.features import load_or_compute
    from genre_tf.files import cache_key
    from genre_tf.nets.encoders import build_text_encoder, text_encoder_identity

    teacher = TextEncoderConfig(model="mpnet", seq_length=config.seq_length, pooling="mean")
    ids, rows = load_or_compute(prepared, PLOT_EMBEDDING, cache_key(text_encoder_identity(teacher)),
                                functools.partial(build_text_encoder, teacher), PLOT)
    row_of = {movie_id: row for row, movie_id in enumerate(ids.tolist())}
    return tuple(rows.read(np.asarray([row_of[movie_id] for movie_id in prepared.split[split]], np.int64))
                 for split in ("train", "dev"))


def distill(data: str, out: str, config: DistillConfig) -> dict:
    """Distil MPNet on a prepared dataset's training plots into out; what was measured (distill.json)."""
    from genre_tf.data.dataset import load_prepared, split_plots
    from genre_tf.nets.mpnet import load_mpnet_encoder, mpnet_architecture, mpnet_handles, package_model_dir

    started = time.monotonic()
    prepared = load_prepared(data)
    checkpoints = os.path.abspath(out).rstrip(os.sep) + ".checkpoints"
    claim_checkpoints(checkpoints, prepared, config)  # before the minutes of tokenising: a refusal answers at once
    train_targets, dev_targets = teacher_embeddings(prepared, config)
    _, preprocessor = mpnet_handles(config.seq_length)
    train_words, train_mask = tokenize(preprocessor, split_plots(prepared, "train"))
    dev_words, dev_mask = tokenize(preprocessor, split_plots(prepared, "dev"))
    model_dir = package_model_dir()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        shape, _ = mpnet_architecture(json.load(handle))
    student = build_student(load_mpnet_encoder(), shape, config.layers)
    before = fidelity(embed(student, dev_words, dev_mask), dev_targets)
    print(f"student of {config.layers} layers {kept_layers(shape.num_layers, config.layers)}, before training: dev "
          f"mse {before['mse']:.5f}, cosine {before['cosine']:.4f}; {len(train_words)} training plots", file=sys.stderr)
    losses, training_seconds = train_student(student, train_words, train_mask, train_targets, config, checkpoints,
                                             report=lambda line: print(line, file=sys.stderr))
    after = fidelity(embed(student, dev_words, dev_mask), dev_targets)
    record = {"teacher": "all-mpnet-base-v2, mean pooling", "kept_layers": kept_layers(shape.num_layers, config.layers),
              "config": dataclasses.asdict(config), "data": os.path.abspath(data), "fingerprint": prepared.fingerprint,
              "training_plots": len(train_words), "epoch_losses": losses, "dev_before": before, "dev_after": after,
              "training_seconds": round(training_seconds, 1),  # every epoch's, a killed process's included
              "seconds": round(time.monotonic() - started, 1)}  # this process's, tokenising and measuring included
    save_student(student, os.path.join(model_dir, "vocab.txt"), out, config, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def claim_checkpoints(folder: str, prepared, config: DistillConfig) -> None:
    """Make the checkpoint folder of a run with these settings, refused when it holds another run's (a resume must
    continue the same run, on the same data)."""
    from genre_tf.files import read_json, write_json

    settings = {"data": os.path.abspath(prepared.path), "fingerprint": prepared.fingerprint,
                "config": dataclasses.asdict(config)}
    path = os.path.join(folder, "settings.json")
    if os.path.exists(path) and read_json(path) != settings:
        raise ValueError(f"{folder} holds checkpoints of a run with other settings ({read_json(path)}); remove it, "
                         "or run with those settings to resume")
    os.makedirs(folder, exist_ok=True)
    write_json(path, settings)


def parse_args(argv=None) -> tuple[str, str, DistillConfig]:
    """(prepared dataset, output folder, config) from the command line."""
    defaults = DistillConfig()
    parser = argparse.ArgumentParser(prog="python -m genre_tf.train.distill", description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a prepared dataset: its training plots teach the student")
    parser.add_argument("--out", required=True, help="the folder to write (encoder/, preprocessor/, distill.json)")
    for field in dataclasses.fields(DistillConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=field.type, default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    config = DistillConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(DistillConfig)})
    return args.data, args.out, config


def check_out(out: str, data: str) -> None:
    """ValueError unless --out is a new folder or an earlier student (its distill.json), outside the data: the
    student replaces it whole, so any other folder there would be lost."""
    from genre_tf.files import refuse_to_write_into

    refuse_to_write_into(out, "--out", {"data": data})
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, STUDENT_FILE)):
        raise ValueError(f"--out {out} exists and holds no student ({STUDENT_FILE}); the student would replace it "
                         "whole: choose a new folder")


def main(argv=None) -> int:
    """The command line: exit 0 with the student written, 2 on a usage error, 1 on data it cannot use."""
    data, out, config = parse_args(argv)
    try:
        check_out(out, data)
        kept_layers(12, config.layers)  # all-mpnet-base-v2's 12
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        record = distill(data, out, config)
    except (ValueError, OSError) as error:  # not a prepared dataset, a damaged one, a checkpoint of other settings
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({key: record[key] for key in ("kept_layers", "epoch_losses", "dev_before", "dev_after",
                                                   "training_seconds", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
