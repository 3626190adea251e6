"""Shared fixtures: an isolated cache, generated posters and catalogues, a tiny TF-Hub BERT."""
import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

GENRES = ["Drama", "Comedy", "Action", "Horror"]
WORDS = ["the", "a", "hero", "love", "fight", "ghost", "laugh", "family", "city", "night", "story", "dark"]


# Slow tests of files whose tests carry no marker of their own (the others say @pytest.mark.slow beside the test).
SLOW_TESTS = (
    "test_batch_predict.py::",
    "test_bench.py::test_seeds_fold_",
    "test_bench.py::test_table3_",
    "test_encoders.py::test_pooling_choices_differ_",
    "test_evaluation.py::test_a_damaged_or_empty_config_",
    "test_evaluation.py::test_bad_runs_give_clear_errors_",
    "test_evaluation.py::test_evaluate_writes_every_file_",
    "test_evaluation.py::test_table_across_runs_",
    "test_fine_tune_layers.py::test_a_run_with_fine_tuned_top_layers_",
    "test_features.py::test_features_are_keyed_by_encoder_",
    "test_fusion.py::test_the_integrated_run_is_its_branches_",
    "test_hostile_inputs.py::test_a_damaged_checkpoint_is_",
    "test_hostile_inputs.py::test_a_failure_before_the_first_backup_",
    "test_hostile_inputs.py::test_an_unfinished_or_locked_run_",
    "test_hostile_inputs.py::test_dev_zero_a_fifo_",
    "test_hostile_inputs.py::test_evaluate_and_export_refuse_a_dataset_changed_",
    "test_hostile_inputs.py::test_export_reports_a_full_disk_",
    "test_hostile_inputs.py::test_serving_refuses_plot_and_poster_",
    "test_poster_pipeline.py::test_every_format_trains_",
    "test_poster_pipeline.py::test_the_prepared_folder_",
    "test_real_movies.py::",
    "test_speed.py::test_a_head_over_cached_features_",
    "test_speed.py::test_fine_tuning_step_flops_",
)


def pytest_collection_modifyitems(items):
    """`pytest -m "not slow"` is the fast tier; the README's command and CI still run everything."""
    for item in items:
        if item.nodeid.removeprefix("tests/").startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Converted models, demo data and feature caches go to a per-session folder."""
    os.environ["GENRE_TF_CACHE"] = str(tmp_path_factory.mktemp("genre_tf_cache"))
    yield os.environ["GENRE_TF_CACHE"]


def image_bytes(size=(40, 60), colour=(200, 30, 30), fmt="JPEG", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def plot_for(genres, rng, words=20) -> str:
    """A plot whose first word reveals the first genre, so tiny models can learn something."""
    cue = {"Drama": "family", "Comedy": "laugh", "Action": "fight", "Horror": "ghost"}[genres[0]]
    return " ".join([cue] + list(rng.choice(WORDS, size=words - 1)))


def random_genres(rng):
    genres = [g for g in GENRES if rng.random() < 0.35]
    return genres or [GENRES[int(rng.integers(len(GENRES)))]]


def write_mmimdb(folder, count=200, seed=0):
    """An MM-IMDb layout folder of `count` generated movies (no split.json)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        genres = random_genres(rng)
        colour = {"Drama": (90, 90, 90), "Comedy": (250, 220, 0), "Action": (250, 100, 0),
                  "Horror": (5, 5, 5)}[genres[0]]
        meta = {"plot": ["short.", plot_for(genres, rng)], "genres": genres, "title": f"M{index}",
                "year": 1990 + index % 30}
        with open(os.path.join(folder, f"tt{index:07d}.json"), "w") as handle:
            json.dump(meta, handle)
        with open(os.path.join(folder, f"tt{index:07d}.jpeg"), "wb") as handle:
            handle.write(image_bytes((48, 64), colour))
    return folder


def write_csv(path, rows, header=("id", "title", "plot", "genres", "poster", "year", "language"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@contextlib.contextmanager
def answering_once(status: int, body: bytes):
    """A local HTTP server answering one POST with `status` and `body`; yields its http://HOST:PORT."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  the name http.server calls
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.HTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that hung up first (a refusal under test) is no server error: printed, it would land
            # in the captured stderr of whichever test runs next

    with Server(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="session")
def tiny_hub_bert(tmp_path_factory):
    """A tiny BERT saved in TF-Hub format (encoder + preprocessor), loaded like any TF-Hub handle."""
    import genre_tf  # noqa: F401
    import tf_keras as keras
    from genre_tf.nets.bert import BertShape, build_bert_encoder, save_hub_encoder, save_hub_preprocessor

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS
    vocab_path = folder / "vocab.txt"
    vocab_path.write_text("\n".join(vocab) + "\n")
    keras.utils.set_random_seed(0)
    encoder = build_bert_encoder(BertShape(vocab_size=len(vocab), hidden_size=8, num_layers=2, num_heads=2,
                                           intermediate_size=16, max_positions=128))
    save_hub_encoder(encoder, str(folder / "encoder"))
    save_hub_preprocessor(str(vocab_path), str(folder / "preprocessor"), seq_length=128)
    return str(folder / "encoder"), str(folder / "preprocessor")


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory):
    """A prepared dataset of 120 generated MM-IMDb movies at 32x32 posters."""
    import genre_tf  # noqa: F401
    from genre_tf.config import PrepareConfig, ValidationRules
    from genre_tf.data.prepare import prepare

    root = tmp_path_factory.mktemp("small")
    write_mmimdb(str(root / "raw"), count=120, seed=1)
    prepare(PrepareConfig(catalogue=str(root / "raw"), out=str(root / "prepared"), name="small-test",
                          rules=ValidationRules(image_size=32), num_genres=4), progress=False)
    return str(root / "prepared")


@pytest.fixture(scope="session")
def tiny_overrides(tiny_hub_bert):
    """train.py options for tiny models: tiny BERT, random EfficientNet-Lite0 at 32 px, small heads and batches."""
    encoder, preprocessor = tiny_hub_bert
    return ["model.text_units=[16, 8]", "model.fusion_units=8", f"text.encoder={encoder}",
            f"text.preprocessor={preprocessor}", "text.seq_length=128", "poster.backbone=efficientnet_lite0",
            "poster.weights=random", "poster.image_size=32", "poster.flip_average=false", "model.fusion=concat",
            "batch_size=8", "epochs=2", "learning_rate=0.001",
            "model.calibration=none"]  # tests of calibration set it themselves (tests/test_calibration.py)


@pytest.fixture(scope="session")
def make_tiny_config(small_prepared, tiny_overrides):
    """A factory of training configs for tiny models on small_prepared: make(kind, *overrides, run_dir=...)."""
    from genre_tf.config import load_config

    def make(kind, *extra, run_dir):
        return load_config(overrides=[f"data={small_prepared}", f"run_dir={run_dir}", f"model.kind={kind}",
                                      *tiny_overrides, *extra])
    return make


@pytest.fixture()
def tiny_config(make_tiny_config, tmp_path):
    """make_tiny_config with the run directory tmp_path/<kind>: tiny_config(kind, *overrides)."""
    return lambda kind, *extra: make_tiny_config(kind, *extra, run_dir=tmp_path / kind)
