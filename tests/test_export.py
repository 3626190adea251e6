"""export/: the SavedModel contract, checked in a fresh process without genre_tf, clients and predict."""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
from genre_tf.limits import MAX_REQUEST_MOVIES
from genre_tf.data.dataset import load_prepared, raw_examples
from genre_tf.evaluate.evaluation import predict_split, restore_run
from genre_tf.evaluate.metrics import tune_thresholds
from genre_tf.files import cache_root, read_json
from genre_tf.serve.predict import latest_version
from genre_tf.serve.serving import export_run
from genre_tf.train import migrate
from genre_tf.train.training import train

from conftest import answering_once, image_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "export"))
import client  # noqa: E402


@pytest.fixture(scope="module")
def exported(make_tiny_config, tmp_path_factory):
    """An integrated late-fusion model (fine-tuned tiny BERT + Lite0 at 32 px) trained one epoch and exported."""
    root = tmp_path_factory.mktemp("export")
    run_dir = train(make_tiny_config("integrated", "epochs=1", "model.fine_tune_text=true", "model.fusion=late",
                                     run_dir=root / "run"))
    return run_dir, export_run(run_dir, str(root / "models"))


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf, tensorflow_text  # noqa: F401
    sys.path.insert(0, sys.argv[3])
    import client
    inputs = np.load(sys.argv[2], allow_pickle=True)
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    plots, posters = list(inputs["plots"]), list(inputs["posters"])
    full = serve(plot=tf.constant(plots), poster=tf.constant(posters))
    body = client.rest_body([p.decode() for p in plots], posters)
    rest = serve(**{k: tf.constant(v) for k, v in client.decode_rest_body(body).items()})
    odd = serve(plot=tf.constant([plots[0], b"", plots[0], b""]),
                poster=tf.constant([b"\\xff\\xd8 not a jpeg", posters[0], b"", b""]))
    # plots of 20 to 240 words in one request, padded in chunks of similar length, against each served alone
    mixed = tf.constant([b" ".join(plots[:k]) for k in (1, 9, 2, 5, 1, 12, 3, 7, 1, 10, 4)])
    together = serve(plot=mixed, poster=tf.constant(posters[:1] * 11))["probabilities"].numpy()
    alone = [serve(plot=mixed[i:i + 1], poster=tf.constant(posters[:1]))["probabilities"].numpy() for i in range(11)]
    json.dump({"probabilities": full["probabilities"].numpy().tolist(),
               "mixed_difference": float(np.abs(together - np.concatenate(alone)).max()),
               "rest_probabilities": rest["probabilities"].numpy().tolist(),
               "genres": [g.decode() for g in full["genres"].numpy()],
               "odd_used": [u.decode() for u in odd["inputs_used"].numpy()],
               "odd_finite": bool(np.isfinite(odd["probabilities"].numpy()).all()),
               "training_code_loaded": any(m.startswith("genre_tf") for m in sys.modules)}, sys.stdout)
""")


@pytest.mark.slow
def test_fresh_process_matches_the_in_memory_model_and_survives_bad_inputs(exported, small_prepared, tmp_path):
    run_dir, version_dir = exported
    expected = predict_split(restore_run(run_dir), "dev")["probabilities"]
    plots, posters = raw_examples(load_prepared(small_prepared), "dev")
    np.savez(tmp_path / "inputs.npz", plots=np.array([p.encode() for p in plots], dtype=object),
             posters=np.array(posters, dtype=object))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    done = subprocess.run([sys.executable, str(script), version_dir, str(tmp_path / "inputs.npz"),
                           os.path.join(ROOT, "export")], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=""), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["training_code_loaded"]
    assert np.abs(np.array(result["probabilities"]) - expected).max() < 1e-5
    assert np.array_equal(result["rest_probabilities"], result["probabilities"])
    assert result["mixed_difference"] < 1e-5
    info = read_json(os.path.join(version_dir, "assets.extra", "export_info.json"))
    predicted = expected >= np.array(info["thresholds"])
    names = [", ".join(g for g, on in zip(info["genres"], row, strict=True) if on) for row in predicted]
    assert result["genres"] == names
    assert result["odd_used"] == ["plot", "poster", "plot", "none"] and result["odd_finite"]


@pytest.mark.slow
def test_saved_model_cli_shows_the_serving_contract(exported):
    _, version_dir = exported
    assert os.path.basename(version_dir) == "1"
    assert not [name for name in os.listdir(os.path.dirname(version_dir)) if name.startswith(".staging")]
    shown = subprocess.run(["saved_model_cli", "show", "--dir", version_dir, "--all"], capture_output=True,
                           text=True, timeout=120).stdout
    default = shown.split("signature_def['serving_default']")[1]
    for name, dtype, shape in (("plot", "DT_STRING", "(-1)"), ("poster", "DT_STRING", "(-1)"),
                               ("probabilities", "DT_FLOAT", "(-1, 4)"), ("genres", "DT_STRING", "(-1)"),
                               ("inputs_used", "DT_STRING", "(-1)")):
        block = default.split(f"['{name}'] tensor_info:")[1]
        assert f"dtype: {dtype}" in block.split("name:")[0] and f"shape: {shape}" in block.split("name:")[0]
    features = shown.split("signature_def['with_poster_features']")[1]
    assert "shape: (-1, 1280)" in features.split("['poster_features'] tensor_info:")[1].split("name:")[0]
    info = read_json(os.path.join(version_dir, "assets.extra", "export_info.json"))
    assert "WordpieceTokenizeWithOffsets" in info["non_stock_ops"]
    assert not any(hasattr(tf.raw_ops, op) for op in info["non_stock_ops"])


@pytest.mark.slow
def test_warmup_requests_parse_and_run(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, version_dir = exported
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert [len(log.predict_log.request.inputs["plot"].string_val) for log in logs] == [1, 4]
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
        assert serve(**inputs)["inputs_used"].numpy().tolist() == [b"plot+poster"] * len(inputs["plot"])


@pytest.mark.slow
def test_features_signature_and_grpc_request(exported):
    _, version_dir = exported
    loaded = tf.saved_model.load(version_dir)
    plots = ["a ghost in the dark night", "laugh with the family"]
    request = client.grpc_request(plots, [image_bytes(), None])
    assert [v.decode() for v in tf.make_ndarray(request.inputs["plot"])] == plots
    assert tf.make_ndarray(request.inputs["poster"])[1] == b""
    features = np.zeros([2, 1280], np.float32)
    with_features = loaded.signatures["with_poster_features"](plot=tf.constant(plots), poster_features=features)
    from_bytes = loaded.signatures["serving_default"](plot=tf.constant(plots), poster=tf.constant([b"", b""]))
    # all-zero features mean "no poster": both fall back to the mean training poster
    assert np.allclose(with_features["probabilities"], from_bytes["probabilities"], atol=1e-6)
    assert with_features["inputs_used"].numpy().tolist() == [b"plot", b"plot"]


@pytest.fixture(scope="module")
def text_exports(make_tiny_config, tmp_path_factory):
    """A frozen-text model exported twice: plot strings in (version 1), token ids in (version 2)."""
    root = tmp_path_factory.mktemp("text_export")
    run_dir = train(make_tiny_config("text_frozen", "epochs=1", run_dir=root / "run"))
    base = str(root / "models")
    text_dir = export_run(run_dir, base)
    os.makedirs(os.path.join(base, ".staging-9-1"))  # a crashed export's leftovers are not a version
    return run_dir, text_dir, export_run(run_dir, base, token_ids=True)


@pytest.mark.slow
def test_token_id_export_matches_the_text_export_and_versions_count_up(text_exports):
    import tensorflow_hub as hub

    run_dir, text_dir, token_dir = text_exports
    assert [os.path.basename(text_dir), os.path.basename(token_dir)] == ["1", "2"]
    assert latest_version(os.path.dirname(token_dir)) == token_dir
    with pytest.raises(FileExistsError):
        export_run(run_dir, os.path.dirname(token_dir), version=2)
    info = read_json(os.path.join(token_dir, "assets.extra", "export_info.json"))
    assert info["token_id_inputs"] and info["non_stock_ops"] == []
    plots = tf.constant(["a ghost in the dark night", "laugh with the family", ""])
    posters = tf.constant([image_bytes(), b"", b""])
    ids = hub.load(os.path.join(token_dir, info["text_preprocessor_handle"]))(plots)
    by_ids = tf.saved_model.load(token_dir).signatures["serving_default"](**ids, poster=posters)
    by_text = tf.saved_model.load(text_dir).signatures["serving_default"](plot=plots, poster=posters)
    assert np.abs(by_ids["probabilities"].numpy() - by_text["probabilities"].numpy()).max() < 1e-5
    # a text-only model has the same signature, ignores posters and says when it had no plot
    assert by_text["inputs_used"].numpy().tolist() == by_ids["inputs_used"].numpy().tolist() == [
        b"plot", b"plot", b"none"]


@pytest.mark.slow
def test_poster_only_model_exports_with_the_same_signature(tiny_config, tmp_path):
    version_dir = export_run(train(tiny_config("poster", "epochs=1")), str(tmp_path / "models"))
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["plot", "poster"]
    used = serve(plot=tf.constant(["a ghost story", "a ghost story"]), poster=tf.constant([image_bytes(), b"??"]))
    assert used["inputs_used"].numpy().tolist() == [b"poster", b"none"]


@pytest.mark.slow
def test_predict_command_reads_a_csv_and_names_missing_posters(exported, tmp_path, capsys):
    from genre_tf.serve.predict import main

    poster = tmp_path / "poster.jpg"
    poster.write_bytes(image_bytes())
    (tmp_path / "movies.csv").write_text(f"id,plot,poster\nm1,a ghost in the dark night,{poster}\n"
                                         f"m2,laugh with the family,{tmp_path / 'missing.jpg'}\n")
    assert main(["--model", os.path.dirname(exported[1]), "--csv", str(tmp_path / "movies.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [(r["movie"], r["inputs_used"]) for r in rows] == [("m1", "plot+poster"), ("m2", "plot")]
    assert "m2: poster" in captured.err and "missing.jpg not found" in captured.err
    assert len(rows[0]["probabilities"]) == 4


@pytest.mark.slow
def test_predict_names_bad_rows_and_keeps_the_good_ones(exported, tmp_path, capsys):
    from genre_tf.serve.predict import main

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes())
    (tmp_path / "movies.csv").write_text(f"id,plot,poster\nok,a ghost in the dark night,{good}\n"
                                         f"bad-poster,laugh with the family,{broken}\nno-plot,,{good}\nshort\n")
    model = os.path.dirname(exported[1])
    assert main(["--model", model, "--csv", str(tmp_path / "movies.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    used = [(r["movie"], r["inputs_used"]) for r in map(json.loads, captured.out.strip().splitlines())]
    assert used == [("ok", "plot+poster"), ("bad-poster", "plot"), ("no-plot", "poster"), ("short", "none")]
    assert "bad-poster: poster" in captured.err and "could not be decoded" in captured.err
    assert "no-plot: empty plot" in captured.err and "short: empty plot; predicted from neither input" in captured.err
    (tmp_path / "empty.csv").write_text("id,plot,poster\n")
    (tmp_path / "noplot.csv").write_text("id,overview\nx,some text\n")
    (tmp_path / "latin1.csv").write_bytes("id,plot\nx,Am\xe9lie\n".encode("latin-1"))
    for name, message in (("empty.csv", "has no movies"), ("noplot.csv", "needs a 'plot' column"),
                          ("latin1.csv", "is not UTF-8")):
        assert main(["--model", model, "--csv", str(tmp_path / name)]) == 1
        assert message in capsys.readouterr().err


def serve_dev(version_dir: str, plots, posters) -> dict:
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    return {name: value.numpy() for name, value in serve(plot=tf.constant(plots), poster=tf.constant(posters)).items()}


@pytest.mark.slow
def test_export_reads_the_run_directory_alone(make_tiny_config, small_prepared, tmp_path, capsys):
    """Trained on a private copy of the data, the run exports after the copy and its feature caches are gone."""
    data = tmp_path / "data"
    shutil.copytree(small_prepared, data, ignore=shutil.ignore_patterns("features"))
    run_dir = train(make_tiny_config("integrated", "epochs=1", "model.fine_tune_text=false", f"data={data}",
                                     run_dir=tmp_path / "run"))
    run = restore_run(run_dir)
    expected = predict_split(run, "dev")
    train_ids = run.prepared.split["train"]
    cached_means = {name: values[[list(ids).index(i) for i in train_ids]].mean(axis=0, dtype=np.float64)
                    for name, (ids, values) in run.caches.items()}
    plots, posters = raw_examples(load_prepared(str(data)), "dev")
    written_at_training = read_json(os.path.join(run_dir, "serving", "serving.json"))

    # A run from before the serving files: the export refuses it and names genre_tf.train.migrate, which computes
    # them once from the dataset, the same as training did.
    shutil.rmtree(os.path.join(run_dir, "serving"))
    with pytest.raises(FileNotFoundError, match=f"has no serving files .*`python -m genre_tf.train.migrate {run_dir}`"):
        export_run(run_dir, str(tmp_path / "models"))
    assert migrate.main([run_dir]) == 0
    assert read_json(os.path.join(run_dir, "serving", "serving.json")) == written_at_training
    first = export_run(run_dir, str(tmp_path / "models"))

    shutil.rmtree(data)  # the prepared copy, and (set aside meanwhile) every feature cache
    features = os.path.join(cache_root(), "features")
    shutil.move(features, tmp_path / "features-aside")
    Path(tmp_path, "models", "batching.config").write_text("max_batch_size { value: 8 }\n")  # tuned by hand
    try:
        second = export_run(run_dir, str(tmp_path / "models"))
    finally:
        shutil.move(tmp_path / "features-aside", features)
    assert Path(tmp_path, "models", "batching.config").read_text() == "max_batch_size { value: 8 }\n"
    for version_dir in (first, second):
        served = serve_dev(version_dir, plots, posters)
        assert np.abs(served["probabilities"] - expected["probabilities"]).max() < 1e-5
        info = read_json(os.path.join(version_dir, "assets.extra", "export_info.json"))
        assert info["thresholds"] == tune_thresholds(expected["labels"], expected["probabilities"]).tolist()
    for name, mean in cached_means.items():  # the missing-input fallbacks are the training means of the caches
        np.testing.assert_allclose(written_at_training["fallback_means"][name], mean, rtol=1e-6, atol=1e-30)
    odd = serve_dev(second, [plots[0], "", ""], [b"", posters[0], b""])
    assert odd["inputs_used"].tolist() == [b"plot", b"poster", b"none"] and np.isfinite(odd["probabilities"]).all()

    shutil.rmtree(os.path.join(run_dir, "serving"))  # without the files and without the dataset: a clear refusal
    with pytest.raises(FileNotFoundError, match="has no serving files"):
        export_run(run_dir, str(tmp_path / "models"))
    capsys.readouterr()
    assert migrate.main([run_dir]) == 1
    error = capsys.readouterr().err
    assert f"error: {data} is not a prepared dataset" in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_a_token_id_export_carries_its_preprocessor_and_no_machine_paths(text_exports, tmp_path):
    import tensorflow_hub as hub

    _, text_dir, token_dir = text_exports
    info = read_json(os.path.join(token_dir, "assets.extra", "export_info.json"))
    assert info["text_preprocessor_handle"] == os.path.join("assets.extra", "text_preprocessor")

    def strings(value):
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings(item)]
        return [s for item in value for s in strings(item)] if isinstance(value, list) else [value]

    values = [value for value in strings(info) if isinstance(value, str)]
    assert values and not [value for value in values if "/" + "tmp" in value or os.path.isabs(value)]
    assert info["encoders"]["text"]["preprocessor"] == "preprocessor"  # the tiny BERT's folder, by name only
    moved = tmp_path / "elsewhere"
    shutil.copytree(token_dir, moved)  # another machine: nothing in the folder points back
    ids = hub.load(str(moved / info["text_preprocessor_handle"]))(tf.constant(["a ghost in the dark night"]))
    by_ids = tf.saved_model.load(str(moved)).signatures["serving_default"](**ids, poster=tf.constant([b""]))
    by_text = tf.saved_model.load(text_dir).signatures["serving_default"](
        plot=tf.constant(["a ghost in the dark night"]), poster=tf.constant([b""]))
    assert np.abs(by_ids["probabilities"].numpy() - by_text["probabilities"].numpy()).max() < 1e-5


@pytest.mark.parametrize("version", ["-3", "0", "two"])
def test_export_refuses_versions_tf_serving_cannot_load(version, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "export"))
    import export_savedmodel

    with pytest.raises(SystemExit) as stopped:
        export_savedmodel.main(["--run", str(tmp_path), "--out", str(tmp_path / "models"), "--version", version])
    assert stopped.value.code == 2 and "--version: must be a positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive integer"):
        export_run(str(tmp_path), str(tmp_path / "models"), version=0)
    assert not os.path.exists(tmp_path / "models")


def batching_parameters(text: str) -> dict[str, int]:
    """TF Serving's own reading of a --batching_parameters_file: a BatchingParameters text proto.

    The message is declared here as tensorflow_serving/servables/tensorflow/session_bundle_config.proto has it
    (tensorflow-serving-api does not ship it), so a misspelt field or broken syntax fails to parse, as in TF Serving.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(name="batching_parameters.proto", package="tensorflow.serving",
                                               dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    fields = {"max_batch_size": "Int64Value", "batch_timeout_micros": "Int64Value",
              "max_enqueued_batches": "Int64Value", "num_batch_threads": "Int64Value",
              "enable_large_batch_splitting": "BoolValue", "max_execution_batch_size": "Int64Value"}
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(fields.items(), start=1):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{kind}")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    parsed = text_format.Parse(text, message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))())
    return {name: getattr(parsed, name).value for name in fields if parsed.HasField(name)}


@pytest.mark.slow
def test_the_export_writes_the_batching_config_the_readme_names(text_exports):
    import re

    base = os.path.dirname(text_exports[2])
    parameters = batching_parameters(Path(base, "batching.config").read_text())
    readme = Path(ROOT, "export", "README.md").read_text()
    assert "--batching_parameters_file=/models/genre_tf/batching.config" in readme
    block = re.search(r"this is what the export writes:\n\n```\n(.*?)```", readme, re.S)
    assert parameters == batching_parameters(block.group(1)) == {
        "max_batch_size": MAX_REQUEST_MOVIES, "enable_large_batch_splitting": True, "max_execution_batch_size": 32,
        "batch_timeout_micros": 5000, "num_batch_threads": 2, "max_enqueued_batches": 100}
    # Any request the signature takes (up to 512 movies) is taken, split into batches of max_execution_batch_size.
    # With batching on, TF Serving runs up to that many requests from different clients as one batch:
    # the model must take that batch, and each row must come out as it does alone (plots of other lengths
    # beside it change how far the batch is trimmed).
    serve = tf.saved_model.load(text_exports[1]).signatures["serving_default"]
    words = ["the", "hero", "ghost", "laugh", "family", "night", "dark", "city"]
    plots = [" ".join(words[(row + i) % len(words)] for i in range(1 + 4 * row)) for row in range(
        parameters["max_execution_batch_size"])]
    merged = serve(plot=tf.constant(plots), poster=tf.constant([b""] * len(plots)))["probabilities"].numpy()
    alone = np.concatenate([serve(plot=tf.constant([plot]), poster=tf.constant([b""]))["probabilities"].numpy()
                            for plot in plots])
    assert merged.shape == (parameters["max_execution_batch_size"], 4) and np.ptp(alone, axis=0).max() > 1e-4
    np.testing.assert_allclose(merged, alone, atol=1e-5, rtol=0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", ["--rest", "--grpc"])
def test_the_client_says_in_one_line_that_the_server_is_down(transport, capsys):
    port = closed_port()
    target = f"http://127.0.0.1:{port}" if transport == "--rest" else f"127.0.0.1:{port}"
    assert client.main([transport, target, "--plot", "a ghost story", "--timeout", "10"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: no answer from TF Serving at {target}: ") and len(error.splitlines()) == 1
    assert ("Connection refused" if transport == "--rest" else "UNAVAILABLE") in error


def test_the_client_shows_the_servers_own_error(capsys):
    with answering_once(404, b'{"error": "Servable not found for request: Latest(genre_tf)"}') as url:
        assert client.main(["--rest", url, "--plot", "a ghost story"]) == 1
    assert capsys.readouterr().err == (f"error: TF Serving at {url} answered HTTP 404: Servable not found for "
                                       "request: Latest(genre_tf)\n")


def test_the_client_reads_a_poster_within_bounds(tmp_path):
    (tmp_path / "p.jpg").write_bytes(image_bytes())
    assert client.read_poster(str(tmp_path / "p.jpg")) == image_bytes()
    os.mkfifo(tmp_path / "fifo")
    for path in ("/dev/zero", str(tmp_path / "fifo")):
        with pytest.raises(ValueError, match="not a regular file"):
            client.read_poster(path)
    with open(tmp_path / "big.jpg", "wb") as handle:
        handle.truncate(client.MAX_POSTER_BYTES + 1)
    with pytest.raises(ValueError, match="larger than 20971520 bytes"):
        client.read_poster(str(tmp_path / "big.jpg"))
