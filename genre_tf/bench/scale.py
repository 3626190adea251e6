"""How cost grows with the catalogue: a synthetic catalogue of N movies through every step, each step measured alone.

    python -m genre_tf.bench scale                       # 1,000 and 10,000 movies, the fast preset
    python -m genre_tf.bench scale --sizes 1000 10000 100000 --scale-root /tmp/scale
    python -m genre_tf.bench scale --scale-config none   # the default encoders (MPNet, Lite2 flip)

For each size the demo generator (genre_tf/data/demo.py) writes a catalogue with small posters, which then goes
through prepare, the Beam features job with 1 and then 2 worker processes (DirectRunner), each into an empty
feature store, one training epoch over the second store's features, evaluate, the export and batch_predict over
the whole catalogue. Each step runs in its own process under a wrapper process, so its peak resident memory is
its own (getrusage(RUSAGE_CHILDREN) in the wrapper sees that one child, or the largest of a Beam job's workers).
Growth is measured between the sizes given, never projected: each step's cost a movie at every size, and from the
smallest size to the largest its peak ratio and the memory each further movie adds.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, holding train.py
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
    """Sizes and settings of the scale benchmark (64-token plots and 96 px posters, as the demo's)."""

    sizes: tuple = (1000, 10000)
    root: str = os.path.join("runs", "scale")  # catalogues, prepared data, stores, runs and logs, one folder a size
    config: str = os.path.join("configs", "fast.yaml")  # train.py's --config, from ROOT ("": the default encoders)
    workers: tuple = (1, 2)    # DirectRunner worker processes of each features step; training reads the last
    poster_size: int = 64      # generated posters, pixels a side
    image_size: int = 96       # prepared and served posters
    seq_length: int = 64       # plot tokens
    batch_size: int = 32


def measure(command: list[str], log: str, out: str = os.devnull, cache: str = "") -> dict:
    """Run one step in a fresh wrapper process (GENRE_TF_CACHE=cache when given): its wall seconds and peak RSS;
    raises with its log if it fails."""
    env = dict(os.environ, GENRE_TF_CACHE=cache) if cache else None
    result = subprocess.run([sys.executable, "-c", WRAPPER, log, out, *command], capture_output=True, text=True,
                            check=True, cwd=ROOT, env=env)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["returncode"]:
        with open(log, encoding="utf-8", errors="replace") as handle:
            tail = handle.read()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed ({measured['returncode']}):\n{tail}")
    return measured


def encoder_sizes(config: ScaleConfig) -> list[str]:
    """The benchmark's plot and poster sizes as train.py options."""
    return [f"text.seq_length={config.seq_length}", f"poster.image_size={config.image_size}"]


def preset_file(config: ScaleConfig) -> str:
    """The preset's path ("" for none): an absolute one as given, a relative one from the repository."""
    return os.path.join(ROOT, config.config) if config.config else ""


def model_options(config: ScaleConfig) -> list[str]:
    """The encoders' options of every step: the preset file, at the benchmark's plot and poster sizes."""
    preset = ["--config", preset_file(config)] if config.config else []
    return [*preset, *encoder_sizes(config)]


def features_step(workers: int) -> str:
    """The features step's name for a number of workers: features_1_worker, features_2_workers."""
    return f"features_{workers}_worker{'s' if workers > 1 else ''}"


def step_commands(config: ScaleConfig, size: int, folder: str) -> dict[str, tuple[list[str], str, str]]:
    """Each step's command, where its stdout goes and its GENRE_TF_CACHE ("": the user's), in order; every step
    reads what the one before wrote. Each features step fills a store of its own; training reads the last one."""
    python, csv_path = sys.executable, os.path.join(folder, "raw", "synthetic_demo.csv")
    data, run_dir, models = (os.path.join(folder, name) for name in ("prepared", "run", "models"))
    options, store = model_options(config), os.path.join(folder, f"cache-{config.workers[-1]}")
    steps = {
        "generate": ([python, "-m", "genre_tf.bench.scale", "--generate", os.path.join(folder, "raw"), str(size),
                      str(config.poster_size)], os.devnull, ""),
        "prepare": ([python, "-m", "genre_tf.prepare", csv_path, f"out={data}", f"name=scale-{size}",
                     f"rules.image_size={config.image_size}"], os.devnull, "")}
    for workers in config.workers:
        steps[features_step(workers)] = (
            [python, "-m", "genre_tf.features", data, *options,
             f"--dead-letters={os.path.join(folder, 'logs', f'dead-letters-{workers}.jsonl')}",
             f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"],
            os.devnull, os.path.join(folder, f"cache-{workers}"))
    steps.update({
        "train_epoch": ([python, os.path.join(ROOT, "train.py"), *options, f"data={data}", f"run_dir={run_dir}",
                         "epochs=1", f"batch_size={config.batch_size}"], os.devnull, store),
        "evaluate": ([python, os.path.join(ROOT, "evaluate.py"), run_dir], os.devnull, store),
        "export": ([python, os.path.join(ROOT, "export", "export_savedmodel.py"), "--run", run_dir, "--out", models],
                   os.devnull, store),
        "batch_predict": ([python, "-m", "genre_tf.batch_predict", "--model", models, "--input", csv_path,
                           "--output", os.path.join(folder, "scored")], os.devnull, store)})
    return steps


def empty_store(folder: str) -> None:
    """A GENRE_TF_CACHE with no features, sharing the user's converted encoders (hub/), so each features step
    encodes every movie and none converts weights."""
    from genre_tf.files import cache_root

    os.makedirs(folder)
    hub = os.path.join(cache_root(), "hub")
    os.makedirs(hub, exist_ok=True)
    os.symlink(hub, os.path.join(folder, "hub"))


def measure_size(config: ScaleConfig, size: int) -> dict:
    """Every step at one catalogue size, from an empty folder."""
    folder = os.path.abspath(os.path.join(config.root, str(size)))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "logs"))
    for workers in config.workers:
        empty_store(os.path.join(folder, f"cache-{workers}"))
    steps = {}
    for name, (command, out, cache) in step_commands(config, size, folder).items():
        print(f"scale: {size} movies, {name}", flush=True)
        measured = measure(command, os.path.join(folder, "logs", f"{name}.log"), out, cache)
        steps[name] = {"seconds": round(measured["seconds"], 2), "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                       "movies_per_second": round(size / measured["seconds"], 1)}
        print(f"  {steps[name]}", flush=True)
    return {"movies": size, "steps": steps, "disk_mb": round(folder_size(folder) / 2 ** 20, 1)}


def folder_size(folder: str) -> int:
    """Bytes of every file under a folder."""
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, names in os.walk(folder) for name in names)


def growth(points: list[dict]) -> dict:
    """Per step, measured: ms a movie at each size, and from the smallest size to the largest the peak ratio, the KB
    each further movie adds to the peak and the ratio of the ms a movie (linear time keeps it at 1 or below)."""
    first, last = points[0], points[-1]
    result = {}
    for step in first["steps"]:
        small, large = first["steps"][step], last["steps"][step]
        per_movie = [1000 * point["steps"][step]["seconds"] / point["movies"] for point in points]
        result[step] = {"ms_per_movie": [round(value, 3) for value in per_movie],
                        "peak_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                        "kb_per_added_movie": round(1024 * (large["peak_rss_mb"] - small["peak_rss_mb"])
                                                    / (last["movies"] - first["movies"]), 2),
                        "ms_per_movie_ratio": round(per_movie[-1] / per_movie[0], 3)}
    return result


def scale(config: ScaleConfig) -> dict:
    """Measure every size (the encoders' files made first, so that no step converts weights), then the growth."""
    import genre_tf  # noqa: F401  sets up tf-keras before TensorFlow loads
    from genre_tf.config import load_config
    from genre_tf.nets.network import fetch_encoder_files

    fetch_encoder_files(load_config(preset_file(config), ["data=scale", *encoder_sizes(config)]))  # not the demo preset
    points = [measure_size(config, size) for size in config.sizes]
    return {"config": dataclasses.asdict(config), "points": points,
            "growth": growth(points) if len(points) > 1 else {}}


def scale_markdown(report: dict) -> str:
    """The table of steps by size, and the measured growth from the smallest size to the largest."""
    points = report["points"]
    lines = ["Peak MB: the largest process of the step (for a Beam job, its largest worker or the driver).", "",
             "| step | " + " | ".join(f"{p['movies']:,} movies: s / movies/s / peak MB" for p in points) + " |",
             "| --- " * (len(points) + 1) + "|"]
    for step in points[0]["steps"]:
        cells = [f"{p['steps'][step]['seconds']:.1f} / {p['steps'][step]['movies_per_second']:.0f} / "
                 f"{p['steps'][step]['peak_rss_mb']:.0f}" for p in points]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Disk used, catalogue to predictions: " + ", ".join(f"{p['movies']:,} movies {p['disk_mb']:.0f} MB"
                                                                       for p in points) + "."]
    if report["growth"]:
        sizes = f"{points[0]['movies']:,} to {points[-1]['movies']:,} movies"
        lines += ["", f"Growth from {sizes}, measured:", "",
                  "| step | " + " | ".join(f"ms a movie at {p['movies']:,}" for p in points)
                  + " | ms a movie, ratio | peak ratio | KB a further movie |", "| --- " * (len(points) + 4) + "|"]
        for step, fit in report["growth"].items():
            lines.append(f"| {step} | " + " | ".join(f"{value:.2f}" for value in fit["ms_per_movie"])
                         + f" | {fit['ms_per_movie_ratio']:.2f} | {fit['peak_ratio']:.2f} | "
                         f"{fit['kb_per_added_movie']:.1f} |")
    return "\n".join(lines) + "\n"


def generate(folder: str, size: int, poster_size: int) -> None:
    """The generate step: the demo catalogue of `size` movies (and its three broken rows)."""
    from genre_tf.data.demo import DemoConfig, write_demo_catalogue

    write_demo_catalogue(folder, DemoConfig(num_movies=size, poster_size=poster_size))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "--generate":
        print("error: scale.py runs its generate step as --generate FOLDER MOVIES POSTER_SIZE; run "
              "`python -m genre_tf.bench scale`", file=sys.stderr)
        sys.exit(2)  # a usage error, as every command's
    generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
