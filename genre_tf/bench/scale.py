"""How cost grows with the catalogue: a synthetic catalogue of N movies through every step, each step timed alone.

    python -m genre_tf.bench scale                       # 1,000 and 10,000 movies, about 25 minutes on 2 cores
    python -m genre_tf.bench scale --sizes 1000 3000 --scale-root /tmp/scale

For each size the demo generator (genre_tf/data/demo.py) writes a catalogue with small posters, which then goes
through prepare, feature caching (poster features and frozen plot embeddings), one training epoch of the
integrated model over frozen text and poster features, the export and predict --csv. Each step runs in its own
process under a wrapper process, so its peak resident memory is its own (getrusage(RUSAGE_CHILDREN) in the
wrapper sees that one child). A straight line fitted over the sizes gives each step's cost per movie and
memory per movie, and a projection to 100,000 movies.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, holding train.py
STEPS = ("generate", "prepare", "features", "train_epoch", "export", "predict")
PROJECT_TO = 100_000
# Run as `python -c WRAPPER LOG OUT COMMAND...`: the peak of RUSAGE_CHILDREN is the command's own (and its children's).
WRAPPER = """
import json, resource, subprocess, sys, time
with open(sys.argv[1], "w") as log, open(sys.argv[2], "w") as out:
    start = time.perf_counter()
    code = subprocess.call(sys.argv[3:], stdout=out, stderr=log)
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "returncode": code}))
"""


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """Sizes and settings of the scale benchmark (the demo preset's 64 tokens and 96 px posters)."""

    sizes: tuple = (1000, 10000)
    root: str = os.path.join("runs", "scale")  # catalogues, prepared data, runs and logs, one folder a size
    poster_size: int = 64      # generated posters, pixels a side
    image_size: int = 96       # prepared and served posters
    seq_length: int = 64       # plot tokens
    batch_size: int = 32


def measure(command: list[str], log: str, out: str = os.devnull) -> dict:
    """Run one step in a fresh wrapper process: its wall seconds and peak RSS; raises with its log if it fails."""
    result = subprocess.run([sys.executable, "-c", WRAPPER, log, out, *command], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["returncode"]:
        with open(log, encoding="utf-8", errors="replace") as handle:
            tail = handle.read()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed ({measured['returncode']}):\n{tail}")
    return measured


def train_options(config: ScaleConfig, data: str, run_dir: str) -> list[str]:
    """train.py options of the measured epoch: integrated over frozen text, the settings features were cached with."""
    return [f"data={data}", f"run_dir={run_dir}", "model.kind=integrated", "model.fine_tune_text=false",
            f"text.seq_length={config.seq_length}", f"poster.image_size={config.image_size}", "epochs=1",
            f"batch_size={config.batch_size}"]


def step_commands(config: ScaleConfig, size: int, folder: str) -> dict[str, tuple[list[str], str]]:
    """Each step's command and where its stdout goes, in order; every step reads what the one before wrote."""
    python, csv_path = sys.executable, os.path.join(folder, "raw", "synthetic_demo.csv")
    data, run_dir, models = (os.path.join(folder, name) for name in ("prepared", "run", "models"))
    options = train_options(config, data, run_dir)
    return {
        "generate": ([python, "-m", "genre_tf.bench.scale", "--generate", os.path.join(folder, "raw"), str(size),
                      str(config.poster_size)], os.devnull),
        "prepare": ([python, "-m", "genre_tf.prepare", csv_path, f"out={data}", f"name=scale-{size}",
                     f"rules.image_size={config.image_size}"], os.devnull),
        "features": ([python, "-m", "genre_tf.bench.scale", "--features", *options], os.devnull),
        "train_epoch": ([python, os.path.join(ROOT, "train.py"), *options], os.devnull),
        "export": ([python, os.path.join(ROOT, "export", "export_savedmodel.py"), "--run", run_dir, "--out", models],
                   os.devnull),
        "predict": ([python, "-m", "genre_tf.predict", "--model", models, "--csv", csv_path, "--json"],
                    os.path.join(folder, "predictions.jsonl")),
    }


def measure_size(config: ScaleConfig, size: int) -> dict:
    """Every step at one catalogue size, from an empty folder."""
    folder = os.path.abspath(os.path.join(config.root, str(size)))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "logs"))
    steps = {}
    for name, (command, out) in step_commands(config, size, folder).items():
        print(f"scale: {size} movies, {name}", flush=True)
        measured = measure(command, os.path.join(folder, "logs", f"{name}.log"), out)
        steps[name] = {"seconds": round(measured["seconds"], 2), "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                       "movies_per_second": round(size / measured["seconds"], 1)}
        print(f"  {steps[name]}", flush=True)
    return {"movies": size, "steps": steps, "disk_mb": round(folder_size(folder) / 2 ** 20, 1)}


def folder_size(folder: str) -> int:
    """Bytes of every file under a folder."""
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, names in os.walk(folder) for name in names)


def fit_growth(points: list[dict]) -> dict:
    """Per step, a least-squares line over the sizes: ms and KB per movie, fixed cost, and the 100k projection."""
    sizes = np.array([point["movies"] for point in points], float)
    growth = {}
    for step in STEPS:
        fits = {}
        for key, unit in (("seconds", 1000.0), ("peak_rss_mb", 1024.0)):
            values = np.array([point["steps"][step][key] for point in points])
            slope, intercept = np.polyfit(sizes, values, 1)
            fits[key] = {"per_movie": round(float(slope * unit), 4), "fixed": round(float(intercept), 1),
                         "projected_100k": round(float(intercept + slope * PROJECT_TO), 1)}
        first, last = points[0]["steps"][step], points[-1]["steps"][step]
        growth[step] = {"ms_per_movie": fits["seconds"]["per_movie"], "fixed_seconds": fits["seconds"]["fixed"],
                        "projected_seconds_100k": fits["seconds"]["projected_100k"],
                        "kb_per_movie": fits["peak_rss_mb"]["per_movie"], "fixed_mb": fits["peak_rss_mb"]["fixed"],
                        "projected_peak_mb_100k": fits["peak_rss_mb"]["projected_100k"],
                        "peak_ratio_last_to_first": round(last["peak_rss_mb"] / first["peak_rss_mb"], 2)}
    return growth


def scale(config: ScaleConfig) -> dict:
    """Measure every size, then fit the growth."""
    points = [measure_size(config, size) for size in config.sizes]
    return {"config": dataclasses.asdict(config), "points": points,
            "growth": fit_growth(points) if len(points) > 1 else {}}


def scale_markdown(report: dict) -> str:
    """The table of steps by size, and the fitted growth."""
    points = report["points"]
    lines = ["| step | " + " | ".join(f"{p['movies']:,} movies: s / movies/s / peak MB" for p in points) + " |",
             "| --- " * (len(points) + 1) + "|"]
    for step in STEPS:
        cells = [f"{p['steps'][step]['seconds']:.1f} / {p['steps'][step]['movies_per_second']:.0f} / "
                 f"{p['steps'][step]['peak_rss_mb']:.0f}" for p in points]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Disk used, catalogue to predictions: " + ", ".join(f"{p['movies']:,} movies {p['disk_mb']:.0f} MB"
                                                                       for p in points) + "."]
    if report["growth"]:
        sizes = f"{points[0]['movies']:,} to {points[-1]['movies']:,}"
        lines += ["", f"Fitted growth (a line through the sizes; the 100,000-movie column is that line extended, "
                      f"not measured); peak ratio is {sizes} movies:", "",
                  "| step | ms per movie | fixed s | projected s at 100k | KB per movie | fixed MB | "
                  "projected peak MB at 100k | peak ratio |", "| --- " * 8 + "|"]
        for step, fit in report["growth"].items():
            lines.append(f"| {step} | {fit['ms_per_movie']:.2f} | {fit['fixed_seconds']:.1f} | "
                         f"{fit['projected_seconds_100k']:.0f} | {fit['kb_per_movie']:.2f} | {fit['fixed_mb']:.0f} | "
                         f"{fit['projected_peak_mb_100k']:.0f} | {fit['peak_ratio_last_to_first']:.2f} |")
    return "\n".join(lines) + "\n"


def generate(folder: str, size: int, poster_size: int) -> None:
    """The generate step: the demo catalogue of `size` movies (and its three broken rows)."""
    from genre_tf.data.demo import DemoConfig, write_demo_catalogue

    write_demo_catalogue(folder, DemoConfig(num_movies=size, poster_size=poster_size))


def cache_features(options: list[str]) -> None:
    """The features step: poster features and plot embeddings cached (under the cache root), as training does."""
    import genre_tf  # noqa: F401  sets up tf-keras before TensorFlow loads
    from genre_tf.config import load_config
    from genre_tf.data.demo import open_prepared
    from genre_tf.nets.network import feature_caches

    config = load_config(overrides=options)
    caches = feature_caches(config, open_prepared(config.data))
    print({name: values.shape for name, (_, values) in caches.items()})


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("--generate", "--features"):
        print("error: scale.py runs its steps as --generate or --features; run `python -m genre_tf.bench scale`",
              file=sys.stderr)
        sys.exit(2)  # a usage error, as every command's
    if sys.argv[1] == "--generate":
        generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        cache_features(sys.argv[2:])
