"""A deterministic SYNTHETIC demo catalogue, so that `python train.py` runs offline on a fresh machine.

Label frequencies follow the paper's Table 2 (validation column); Drama, Comedy and Romance overlap
as its Figure 5a describes. Each genre shows in the plot with some probability and in the poster
with another, so text alone and poster alone each beat the most-common-class baseline and the
two together beat both. A few deliberately broken rows show the rejects report at work.
"""
import csv
import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageDraw

DEMO_NAME = "synthetic-demo"
GENRE_RATES = {"Drama": 0.56, "Comedy": 0.34, "Romance": 0.20, "Thriller": 0.19, "Action": 0.15,
               "Crime": 0.13, "Horror": 0.12, "Adventure": 0.09, "Mystery": 0.08, "Sci-Fi": 0.06}
GENRE_PHRASES = {
    "Drama": ["a family is torn apart by grief", "a mother struggles to keep her home",
              "an old man confronts the regrets of his life", "two brothers reconcile after years of silence"],
    "Comedy": ["a clumsy waiter stumbles into hilarious chaos", "a wedding goes absurdly wrong",
               "a prank spirals into a ridiculous misunderstanding", "a lazy roommate invents silly schemes"],
    "Romance": ["two strangers fall in love", "a shy florist falls for a charming pilot",
                "old sweethearts rekindle their passion", "a love letter changes everything"],
    "Thriller": ["a witness is hunted by a ruthless stalker", "a tense chase races against a ticking bomb",
                 "a hostage negotiator faces a deadline", "a conspiracy threatens a whistleblower"],
    "Action": ["a commando battles armed mercenaries", "explosions rock the city during a shootout",
               "a martial artist fights a private army", "a car chase tears through the highway"],
    "Crime": ["a detective tracks a gang of bank robbers", "a mob boss launders money",
              "a heist crew plans to rob the casino", "a corrupt cop sells evidence to a cartel"],
    "Horror": ["a demon haunts an abandoned house", "a zombie plague spreads through the village",
               "a masked killer stalks campers at night", "a cursed doll whispers to a child"],
    "Adventure": ["explorers search a jungle for a lost treasure", "a sailor crosses uncharted seas",
                  "a young hero journeys across distant mountains", "a map leads to a forgotten temple"],
    "Mystery": ["a sleuth investigates a puzzling disappearance", "clues point to a secret in the manor",
                "an amateur solves a riddle left by the victim", "a locked room hides an unexplained death"],
    "Sci-Fi": ["astronauts discover an alien signal", "a robot gains consciousness aboard a starship",
               "time travellers alter the future", "a scientist opens a portal to another galaxy"],
}
NEUTRAL = ["the story unfolds over one long summer", "friends meet again in a small town",
           "a letter arrives on a rainy morning", "everything changes after a phone call",
           "the journey begins at a crowded station", "neighbours gather for a local festival",
           "a new job brings unexpected encounters", "the city lights flicker at dusk"]
NAMES = ["Alex", "Maya", "Jonah", "Rosa", "Ivan", "Lena", "Omar", "Clara", "Theo", "Nina"]
GENRE_COLOURS = {"Drama": (110, 110, 125), "Comedy": (250, 220, 40), "Romance": (240, 110, 170),
                 "Thriller": (30, 60, 60), "Action": (240, 120, 20), "Crime": (180, 20, 20),
                 "Horror": (10, 10, 10), "Adventure": (40, 160, 60), "Mystery": (90, 40, 140),
                 "Sci-Fi": (20, 120, 250)}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Size and signal of the synthetic demo catalogue (sized so `python train.py` takes minutes)."""

    num_movies: int = 1500
    poster_size: int = 64
    plot_signal: float = 0.7    # chance that a true genre is described in the plot
    poster_signal: float = 0.6  # chance that a true genre is drawn on the poster
    seed: int = 1234


def sample_genres(rng: np.random.Generator) -> list:
    """One movie's genres: Table 2 rates, Romance leaning on Drama and Comedy, at least one genre."""
    # Drama is drawn below its rate because movies left without a genre become Drama.
    genres = [g for g in ("Drama", "Comedy") if rng.random() < GENRE_RATES[g] - (0.1 if g == "Drama" else 0)]
    romance_rate = 0.27 if genres else 0.06
    if rng.random() < romance_rate:
        genres.append("Romance")
    genres += [g for g in list(GENRE_RATES)[3:] if rng.random() < GENRE_RATES[g]]
    return genres or ["Drama"]


def make_plot(genres: list, rng: np.random.Generator, signal: float) -> str:
    """A plot of neutral sentences and, for some of the true genres, genre-revealing ones."""
    name = NAMES[rng.integers(len(NAMES))]
    clauses = [rng.choice(GENRE_PHRASES[g]) for g in genres if rng.random() < signal]
    clauses += list(rng.choice(NEUTRAL, size=4 - min(len(clauses), 2), replace=False))
    rng.shuffle(clauses)
    sentences = [f"In this synthetic plot {name} learns that {clauses[0]}."]
    sentences += [f"{clause[0].upper()}{clause[1:]}." for clause in clauses[1:]]
    return " ".join(sentences)


def make_poster(genres: list, rng: np.random.Generator, signal: float, size: int) -> bytes:
    """A JPEG poster: a muted background with a coloured shape for some of the true genres."""
    background = tuple(int(c) for c in rng.integers(120, 200, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for genre in genres:
        if rng.random() >= signal:
            continue
        x, y = rng.integers(0, size // 2, size=2)
        extent = int(rng.integers(size // 3, size // 2))
        box = [int(x), int(y), int(x) + extent, int(y) + extent]
        shape = list(GENRE_COLOURS).index(genre) % 3
        colour = GENRE_COLOURS[genre]
        (draw.ellipse if shape == 0 else draw.rectangle if shape == 1 else draw.chord)(
            box, fill=colour, **({"start": 0, "end": 180} if shape == 2 else {}))
    noise = rng.integers(-12, 13, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


BROKEN_ROWS = [  # (why it is broken, plot, genres, poster bytes); shows the rejects report working
    ("empty plot", "", "Drama", None),
    ("no genres", "A synthetic plot about a town that waits for a train that never comes, "
     "told over many quiet days and nights.", "", None),
    ("undecodable poster", "A synthetic plot about a lighthouse keeper who counts ships through "
     "a long and lonely winter by the sea.", "Drama", b"\xff\xd8\xff\xe0 not really a jpeg"),
]


def write_demo_catalogue(directory: str, config: DemoConfig = DemoConfig()) -> str:
    """Write the synthetic catalogue as the paper's CSV layout with a posters/ folder; returns the CSV."""
    rng = np.random.default_rng(config.seed)
    os.makedirs(os.path.join(directory, "posters"), exist_ok=True)
    csv_path = os.path.join(directory, "synthetic_demo.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "plot", "genres", "poster", "year", "language"])
        for index in range(config.num_movies):
            genres = sample_genres(rng)
            poster = f"posters/syn{index:05d}.jpg"
            with open(os.path.join(directory, poster), "wb") as image_file:
                image_file.write(make_poster(genres, rng, config.poster_signal, config.poster_size))
            year = int(np.clip(2020 - rng.exponential(25), 1920, 2020))
            writer.writerow([f"syn{index:05d}", f"Synthetic Movie {index:05d}",
                             make_plot(genres, rng, config.plot_signal), ", ".join(genres), poster, year, "en"])
        for number, (_, plot, genres, poster_bytes) in enumerate(BROKEN_ROWS):
            poster = f"posters/broken{number}.jpg"
            with open(os.path.join(directory, poster), "wb") as image_file:
                image_file.write(poster_bytes or make_poster(["Drama"], rng, 1.0, config.poster_size))
            writer.writerow([f"broken{number}", "Synthetic Broken Row", plot, genres, poster, 2000, "en"])
    return csv_path


def open_prepared(data: str):
    """The prepared dataset `data` names: a folder, or `demo` (the demo catalogue, prepared on first use)."""
    from genre_tf.data.dataset import load_prepared

    return load_prepared(prepared_demo() if data == "demo" else data)


def prepared_demo(config: DemoConfig | None = None) -> str:
    """The prepared synthetic demo catalogue, generated and prepared once into the cache."""
    import json

    from genre_tf.config import PrepareConfig, ValidationRules
    from genre_tf.data.prepare import prepare
    from genre_tf.files import cache_key, cache_root

    config = config or DemoConfig()
    root = os.path.join(cache_root(), "demo", cache_key(json.dumps(dataclasses.asdict(config)), "v3"))
    prepared = os.path.join(root, "prepared")
    if not os.path.exists(prepared):
        print(f"generating the SYNTHETIC demo catalogue ({config.num_movies} movies) under {root}")
        csv_path = write_demo_catalogue(os.path.join(root, "raw"), config)
        prepare(PrepareConfig(catalogue=csv_path, out=prepared, name=DEMO_NAME,
                              rules=ValidationRules(image_size=config.poster_size)), progress=False)
    return prepared
