"""Explanations by occlusion: a planted word and a planted poster patch are found, through the export alone."""
import io
import json

import numpy as np
import pytest
from PIL import Image

import genre_tf  # noqa: F401
from genre_tf.serve.explain import distinct_words, explain_movie, occluded_posters, without_word

from conftest import WORDS, write_csv

FILLER = [w for w in WORDS if w not in ("ghost", "fight", "laugh")]
PATCH = (0, 0)  # the poster patch (row, column of a 3 x 3 grid) that decides Comedy


def planted_poster(comedy: bool, rng) -> bytes:
    """A dark poster, a shade apart for each; a Comedy one carries a bright yellow block in its top-left third."""
    pixels = np.full((60, 48, 3), int(rng.integers(30, 50)), np.uint8)
    if comedy:
        pixels[:20, :16] = (250, 230, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def planted_plot(horror: bool, rng) -> str:
    """Filler words; a Horror plot carries 'ghost' once, somewhere."""
    words = list(rng.choice(FILLER, size=15))  # prepare's shortest plot: one word is a fifteenth of the mean
    if horror:
        words[int(rng.integers(len(words)))] = "ghost"
    return " ".join(words)


def bag_of_words_bert(folder) -> tuple[str, str]:
    """A TF-Hub BERT with no transformer layer, 48 wide: its mean-pooled output keeps which words a plot holds
    (the 2-layer, 8-wide test BERT scrambles them: a logistic regression on it cannot find a planted word)."""
    import tf_keras as keras
    from genre_tf.nets.bert import BertShape, build_bert_encoder, save_hub_encoder, save_hub_preprocessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    keras.utils.set_random_seed(0)
    encoder = build_bert_encoder(BertShape(vocab_size=len(vocab), hidden_size=48, num_layers=0, num_heads=2,
                                           intermediate_size=16, max_positions=128))
    save_hub_encoder(encoder, str(folder / "encoder"))
    save_hub_preprocessor(str(folder / "vocab.txt"), str(folder / "preprocessor"), seq_length=128)
    return str(folder / "encoder"), str(folder / "preprocessor")


@pytest.fixture(scope="module")
def planted_export(tmp_path_factory):
    """An integrated tiny model trained where 'ghost' alone decides Horror and the yellow block alone Comedy.

    The poster branch is the real ImageNet EfficientNet-Lite0 at 32 px (random weights give features of 1e-13)."""
    from genre_tf.config import PrepareConfig, ValidationRules, load_config
    from genre_tf.data.prepare import prepare
    from genre_tf.serve.serving import export_run
    from genre_tf.train.training import train

    root = tmp_path_factory.mktemp("planted")
    encoder, preprocessor = bag_of_words_bert(root)
    rng = np.random.default_rng(3)
    rows = []
    for index in range(400):
        horror, comedy = bool(rng.random() < 0.4), bool(rng.random() < 0.4)
        genres = [g for g, on in (("Horror", horror), ("Comedy", comedy), ("Drama", rng.random() < 0.5)) if on]
        with open(root / f"p{index}.png", "wb") as handle:
            handle.write(planted_poster(comedy, rng))
        rows.append((f"m{index}", f"Movie {index}", planted_plot(horror, rng), "|".join(genres or ["Drama"]),
                     f"p{index}.png", 2000, "en"))
    csv_path = write_csv(str(root / "movies.csv"), rows)
    prepared = str(root / "prepared")
    prepare(PrepareConfig(catalogue=csv_path, out=prepared, name="planted", rules=ValidationRules(image_size=32),
                          genres=("Drama", "Comedy", "Horror")), progress=False)
    config = load_config(overrides=[
        f"data={prepared}", f"run_dir={root / 'run'}", "model.kind=integrated", f"text.encoder={encoder}",
        f"text.preprocessor={preprocessor}", "poster.backbone=efficientnet_lite0",
        "poster.image_size=32", "model.text_units=[32, 16]", "model.fusion_units=16", "batch_size=16", "epochs=60",
        "patience=60", "learning_rate=0.01", "loss=bce", "model.dropout=0.1"])
    run_dir = train(config)
    return export_run(run_dir, str(root / "models"))


def test_word_helpers_delete_every_occurrence_ignoring_case_and_punctuation():
    plot = "The ghost, the GHOST and a cat."
    assert distinct_words(plot) == ["the", "ghost", "and", "a", "cat"]
    assert without_word(plot, "ghost") == "The the and a cat."
    reference, variants = occluded_posters(planted_poster(True, np.random.default_rng(0)), grid=3)
    with Image.open(io.BytesIO(variants[0])) as hidden, Image.open(io.BytesIO(reference)) as whole:
        hidden, whole = np.asarray(hidden), np.asarray(whole)
    assert len(variants) == 9 and (hidden[20:] == whole[20:]).all() and (hidden[:20, :16] != (250, 230, 0)).all()


@pytest.mark.slow
def test_explain_ranks_the_planted_word_first_and_the_planted_patch_hottest(planted_export, tmp_path, capsys):
    from genre_tf.serve.predict import load_serving, main

    rng = np.random.default_rng(11)
    plot = planted_plot(True, rng)
    poster = tmp_path / "comedy.png"
    poster.write_bytes(planted_poster(True, rng))
    assert main(["--model", planted_export, "--plot", plot, "--poster", str(poster), "--explain", "--json",
                 "--explain-dir", str(tmp_path / "heat")]) == 0
    explanation = json.loads(capsys.readouterr().out)
    by_genre = {genre["genre"]: genre for genre in explanation["genres"]}
    assert by_genre["Horror"]["predicted"] and by_genre["Horror"]["top_words"][0]["word"] == "ghost", explanation
    assert by_genre["Horror"]["top_words"][0]["drop"] > 0.1
    assert by_genre["Horror"]["plot_contribution"] > abs(by_genre["Horror"]["poster_contribution"])
    assert by_genre["Comedy"]["predicted"]
    assert by_genre["Comedy"]["poster_contribution"] > abs(by_genre["Comedy"]["plot_contribution"])
    with Image.open(explanation["poster_heat_map"]) as image:
        assert image.format == "PNG" and image.size[0] > 300
    # the heat map: hiding the yellow block's patch lowers Comedy most of all nine patches
    serving = load_serving(planted_export)
    heat = explain_movie(serving, plot, poster.read_bytes(), grid=3)["poster_heat"]
    comedy = heat[:, :, serving.genres.index("Comedy")]
    assert np.unravel_index(np.argmax(comedy), comedy.shape) == PATCH and comedy[PATCH] > 0.2
    # faithful: deleting the top words of each explained genre costs it more than deleting as many random words
    from genre_tf.serve.explain import faithfulness

    movies = [{"plot": planted_plot(True, rng), "poster": planted_poster(False, rng)} for _ in range(6)]
    result = faithfulness(serving, movies, words=2)
    assert result["cases"] >= 6 and result["top_words_drop"] > result["random_words_drop"] + 0.1
