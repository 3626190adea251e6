"""Read a raw catalogue once, validate every record, split, and write a prepared dataset.

    python -m genre_tf.prepare CATALOGUE [--config FILE.yaml] out=DIR [key=value ...]
    python -m genre_tf.prepare movies.csv out=prepared/movies num_genres=5 genreless=drop
"""
import argparse
import csv
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm

from genre_tf.config import CommandLine, PrepareConfig, ValidationRules, config_to_dict, describe_keys, load_config
from genre_tf.data.readers import SPLIT_NAMES, read_catalogue
from genre_tf.data.records import Movie, RawMovie, RecordError, Reject, genre_key, id_key, validate_movie
from genre_tf.data.split import (frequency_table, multi_hot, stratified_split, time_split, top_genres, year_summary,
                                 year_table)
from genre_tf.data.spool import MovieSpool, SpooledMovie
from genre_tf.files import enclosing, is_run_folder, refuse_to_write_into, staging_folder

TEXT_ONLY = "text_only.csv"  # the movies kept without a poster, named as rejects.csv names the others
READ_AHEAD = 16  # records read ahead of validation, per worker: enough to keep every worker busy
Kept = Movie | SpooledMovie  # a validated movie, or what prepare holds of one whose record waits in a MovieSpool


def check_trainable(split: dict[str, list[str]], config: PrepareConfig, rejects: list[Reject]) -> None:
    """Refuse a split that cannot train or select a model: too few train movies, or no dev movie."""
    sizes = ", ".join(f"{name} {len(split[name])}" for name in SPLIT_NAMES)
    problems = []
    if len(split["train"]) < config.min_train_movies:
        problems.append(f"{len(split['train'])} training movie(s), fewer than one batch of {config.min_train_movies} "
                        "(min_train_movies)")
    if not split["dev"]:
        problems.append("no dev movie to select the best epoch on")
    if problems:
        raise ValueError(f"{config.catalogue}: nothing written: {' and '.join(problems)} ({sizes}).\n"
                         f"{summarize_rejects(rejects, report=None)}")
    if not split["test"]:
        print(f"warning: the test part is empty ({sizes}); evaluate.py will refuse to score test", file=sys.stderr)


def validate_all(records: Iterable, rules: ValidationRules, workers: int = 0, progress: bool = True,
                 spool: MovieSpool | None = None) -> tuple[list[Kept], list[Reject]]:
    """Validate records in parallel as they are read, keeping order; duplicates of an earlier id are rejected.

    With a spool, each kept movie goes to disk as it is validated and the list holds its SpooledMovie.
    """
    movies, rejects, first_seen = [], [], {}
    workers = workers or os.cpu_count()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = map_in_order(pool, functools.partial(validated, rules=rules), records, READ_AHEAD * workers)
        for result in tqdm(results, desc="validating", unit="movie", disable=not progress, mininterval=1.0):
            if isinstance(result, Reject):
                rejects.append(result)
                continue
            key = id_key(result.movie_id)  # "tt1", "TT1", "ｔｔ1" and "tt\u200b1" are one movie
            if key in first_seen:
                source, spelled = first_seen[key]
                seen_as = "" if spelled == result.movie_id else f" as {spelled!r}"
                rejects.append(Reject(result.source, result.movie_id,
                                      f"duplicate id (first seen at {source}{seen_as})"))
            else:
                first_seen[key] = (result.source, result.movie_id)
                movies.append(result if spool is None else spool.put(result))
    return movies, rejects


def validated(record: RawMovie | Reject, rules: ValidationRules) -> Movie | Reject:
    """The record validated, or its Reject (a reader's Reject as it is)."""
    if isinstance(record, Reject):
        return record
    try:
        return validate_movie(record, rules)
    except RecordError as error:
        return Reject(record.source, str(record.movie_id or ""), str(error))


def map_in_order(pool: ThreadPoolExecutor, function: Callable, items: Iterable, ahead: int) -> Iterator:
    """function(item) for each item, run on the pool and given back in order, reading at most `ahead` items
    before their results are taken (Executor.map reads every item at once: the whole catalogue in memory)."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # stopped early (an error): what was not started need not run
        for future in pending:
            future.cancel()


def noting_ids(records: Iterable, seen: dict[str, str]) -> Iterator:
    """The records as they come, each one's id noted on the way in `seen` (its id_key: the first source)."""
    for record in records:
        if str(record.movie_id or "").strip():
            seen.setdefault(id_key(str(record.movie_id).strip()), record.source)
        yield record


def resolve_split(movies: list[Kept], given: dict[str, list[str]] | None, config: PrepareConfig,
                  rejects: list[Reject]) -> dict[str, list[str]]:
    """The layout's own split restricted to valid movies, or a split of them drawn by config.split."""
    if given is not None and config.split == "time":
        print("warning: split=time is not used: the catalogue brings its own train/dev/test split, which is kept",
              file=sys.stderr)
    if given is None and config.split == "time":
        undated = sum(movie.year is None for movie in movies)
        if undated == len(movies):
            raise ValueError(f"split=time needs release years, and none of the {len(movies)} valid movies has one "
                             "(a year column); use split=random")
        if undated:
            print(f"split=time: {undated} of {len(movies)} movies have no year and go to train", file=sys.stderr)
        return time_split([m.movie_id for m in movies], [m.year for m in movies], config.fractions, config.seed)
    if given is None:
        return stratified_split([m.movie_id for m in movies], [m.genres for m in movies],
                                config.fractions, config.seed)
    valid = {movie.movie_id for movie in movies}
    assigned = {movie_id for ids in given.values() for movie_id in ids}
    for movie in movies:
        if movie.movie_id not in assigned:
            rejects.append(Reject(movie.source, movie.movie_id, "id is in no part of the given split"))
    seen = valid | {reject.movie_id for reject in rejects}
    for name in SPLIT_NAMES:
        for movie_id in given[name]:
            if movie_id not in seen:
                rejects.append(Reject(f"split ({name})", movie_id, "listed in the split but no record has this id"))
    return {name: [movie_id for movie_id in given[name] if movie_id in valid] for name in SPLIT_NAMES}


def read_extra_train(config: PrepareConfig, main_ids: dict[str, str], progress: bool,
                     spool: MovieSpool | None) -> tuple[list[Kept], list[Reject]]:
    """The valid movies of config.extra_train whose id no record of the main catalogue carries (main_ids: every id
    key of its records, with the first source), and its rejects.

    Its rows may lack a poster whatever rules.require_poster says: the option is there to add text-only catalogues.
    """
    catalogue = read_catalogue(config.extra_train, columns=config.columns, require_poster=False)
    rules = dataclasses.replace(config.rules, require_poster=False)
    movies, rejects = validate_all(catalogue.records, rules, config.workers, progress, spool)
    kept = []
    for movie in movies:
        source = main_ids.get(id_key(movie.movie_id))
        if source:  # the same movie could sit in the main catalogue's dev or test: never train on it
            rejects.append(Reject(movie.source, movie.movie_id, f"duplicate id: also in the main catalogue ({source})"))
        else:
            kept.append(movie)
    return kept, rejects


def unify_spellings(movies: list[Kept], fixed: dict[str, str] | None = None) -> list[Kept]:
    """Spell each genre one way: the catalogue's most common spelling among those equal ignoring case, or the one
    `fixed` gives for its key (extra_train's genres are spelled as the main catalogue spells them)."""
    spellings: dict[str, Counter] = {}
    for movie in movies:
        for genre in movie.genres:
            spellings.setdefault(genre_key(genre), Counter())[genre] += 1
    chosen = {key: min(counts, key=lambda name: (-counts[name], name)) for key, counts in spellings.items()}
    chosen.update(fixed or {})
    return [dataclasses.replace(movie, genres=tuple(chosen[genre_key(g)] for g in movie.genres)) for movie in movies]


def choose_vocabulary(train_genres: list[tuple], config: PrepareConfig) -> list[str]:
    """The genres to predict: the closed list given, or the most frequent ones on the training part."""
    if not config.genres:
        return top_genres(train_genres, config.num_genres)
    spelled = {genre_key(g): g for movie in train_genres for g in movie}
    missing = [g for g in config.genres if genre_key(g) not in spelled]
    if missing:
        raise ValueError(f"genres names {missing}, which no training movie has; the catalogue's most frequent "
                         f"genres are {top_genres(train_genres, 20)}")
    return [spelled[genre_key(g)] for g in config.genres]


def apply_vocabulary(movies: list[Kept], split: dict[str, list[str]], genres: list[str],
                     policy: str, rejects: list[Reject]) -> tuple[dict[str, list[str]], dict]:
    """Apply the genreless policy; returns the split and counts for the summary.

    A movie is never rejected for carrying a genre outside the vocabulary; one with none of the
    vocabulary's genres is kept with no label (the paper) or dropped into the rejects.
    """
    if policy not in ("keep", "drop"):
        raise ValueError(f"genreless must be 'keep' or 'drop', got {policy!r}")
    kept_genres = set(genres)
    in_split = {movie_id for ids in split.values() for movie_id in ids}
    chosen = [movie for movie in movies if movie.movie_id in in_split]
    genreless = [movie for movie in chosen if not kept_genres.intersection(movie.genres)]
    counts = {"with_other_genres_too": sum(1 for m in chosen if set(m.genres) - kept_genres
                                           and kept_genres.intersection(m.genres)),
              "with_none_of_the_genres": len(genreless), "genreless_policy": policy}
    if policy == "keep":
        return split, counts
    for movie in genreless:
        rejects.append(Reject(movie.source, movie.movie_id,
                              f"none of its genres {list(movie.genres)} is among the {len(genres)} kept"))
    dropped = {movie.movie_id for movie in genreless}
    return {name: [i for i in ids if i not in dropped] for name, ids in split.items()}, counts


def genre_counts(movies: list[Kept], ids: list[str]) -> dict[str, int]:
    """How many of the given movies carry each genre, most frequent first."""
    wanted = set(ids)
    counts = Counter(genre for movie in movies if movie.movie_id in wanted for genre in movie.genres)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def split_record(movies: list[Kept], split: dict[str, list[str]], config: PrepareConfig, given: bool) -> dict:
    """What dataset.json says of the split: how it was drawn and the release years of the catalogue and each part."""
    year_of = {movie.movie_id: movie.year for movie in movies}
    kept = [movie_id for name in SPLIT_NAMES for movie_id in split[name]]
    method = ({"method": "given", "detail": "the catalogue's own train/dev/test"} if given else
              {"method": config.split, "seed": config.seed, "fractions": list(config.fractions),
               "detail": "oldest years to train, newest to test" if config.split == "time" else
               "iterative stratification over the ids in an order drawn from the seed"})
    years = {"catalogue": year_summary([year_of[i] for i in kept])}
    years.update({name: year_summary([year_of[i] for i in split[name]]) for name in SPLIT_NAMES})
    return dict(method, years=years)


def describe_split(record: dict) -> str:
    """The split's method and years in words and a table, as prepare prints them."""
    method = record.get("method", "id order")
    seed = f", seed {record['seed']}" if "seed" in record else ""
    return f"split: {method}{seed} ({record.get('detail', '')}).\n{year_table(record.get('years', {}))}"


def write_prepared(movies: list[Kept], split: dict[str, list[str]], genres: list[str], rejects: list[Reject],
                   config: PrepareConfig, directory: str, vocabulary: dict, spool: MovieSpool | None = None,
                   split_given: bool = False, extra: dict | None = None) -> dict:
    """Write every artifact of a prepared dataset into `directory` (the movies' records and posters from `spool`, if
    given); returns its metadata."""
    from genre_tf.data.dataset import DATASET_FORMAT, POSTER_STORAGE, file_digests, serialize_example, write_shards

    by_id = {movie.movie_id: movie for movie in movies}
    whole = spool.movie if spool else lambda movie: movie  # each movie's plot and poster, read back one at a time
    write_movies_jsonl(map(whole, movies), split, os.path.join(directory, "movies.jsonl"))
    with open(os.path.join(directory, "genres.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(genres) + "\n")
    with open(os.path.join(directory, "split.json"), "w", encoding="utf-8") as handle:
        json.dump(split, handle)
    write_rejects(rejects, os.path.join(directory, "rejects.csv"))
    notes = text_only_notes(movies, split)
    write_rejects(notes, os.path.join(directory, TEXT_ONLY), why="why")
    shards, labels = {}, {}
    for name in SPLIT_NAMES:
        chosen = [by_id[movie_id] for movie_id in split[name]]
        labels[name] = multi_hot([movie.genres for movie in chosen], genres)
        # a generator: one serialized example at a time
        examples = (serialize_example(m.movie_id, m.plot, spool.get(m.poster_png) if spool else m.poster_png,
                                      row, m.year) for m, row in zip(map(whole, chosen), labels[name], strict=True))
        shards[name] = write_shards(examples, directory, name, config.shard_size, len(chosen))
    files = file_digests(directory, shards)  # each file read once; the fingerprint is made of the shards' digests
    # The format is hashed too, so a dataset of another format never shares a fingerprint (nor feature caches).
    digest = hashlib.sha256(f"genre_tf dataset format {DATASET_FORMAT}\n".encode())
    for name in (name for split in SPLIT_NAMES for name in shards[split]):
        digest.update(f"{name} {files[name]}\n".encode())
    metadata = {
        "format": DATASET_FORMAT, "posters": POSTER_STORAGE,
        "name": config.name or os.path.basename(os.path.normpath(config.catalogue)),
        "catalogue": os.path.abspath(config.catalogue), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "image_size": config.rules.image_size, "fingerprint": digest.hexdigest()[:16],
        "counts": {name: len(split[name]) for name in SPLIT_NAMES} | {"rejected": len(rejects)},
        "genres": genres, "vocabulary": vocabulary, "split": split_record(movies, split, config, split_given),
        "shards": shards, "files": files,
        "text_only": text_only_record(notes, config),
        "config": config_to_dict(config),
    }
    if extra:
        metadata["extra_train"] = extra
    with open(os.path.join(directory, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
    print(frequency_table(genres, labels))
    return metadata



def write_movies_jsonl(movies: Iterable[Movie], split: dict[str, list[str]], path: str) -> None:
    """movies.jsonl: each movie of the split, in catalogue order, with its part and whether it has a poster."""
    part_of = {movie_id: name for name, ids in split.items() for movie_id in ids}
    with open(path, "w", encoding="utf-8") as handle:
        for movie in movies:
            if movie.movie_id in part_of:
                row = {k: v for k, v in dataclasses.asdict(movie).items() if k not in ("poster_png", "no_poster")}
                row.update(split=part_of[movie.movie_id], has_poster=movie.has_poster)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def text_only_record(notes: list[Reject], config: PrepareConfig) -> dict:
    """What dataset.json says of the movies kept without a poster: how many in each part, and by which rule."""
    rule = ("rules.require_poster=true: a movie without a poster is rejected" if config.rules.require_poster
            else "rules.require_poster=false: a movie whose poster is missing is kept, text-only")
    if config.extra_train:
        rule += "; extra_train's movies are kept without one"
    counts = Counter(note.reason.split(":")[0] for note in notes)
    return {"movies": len(notes), **{name: counts[name] for name in SPLIT_NAMES}, "rule": rule, "report": TEXT_ONLY}


def write_rejects(rejects: list[Reject], path: str, why: str = "reason") -> None:
    """The rejects report: one row per record not kept, with its source, id and reason (also text_only.csv)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "movie_id", why])
        for reject in rejects:
            writer.writerow([reject.source, reject.movie_id, reject.reason])


def summarize_rejects(rejects: list[Reject], limit: int = 10, report: str | None = "rejects.csv") -> str:
    """Counts of rejects by reason, the first few by name, and the report holding the rest (None: not written)."""
    counts: dict[str, int] = {}
    for reject in rejects:
        kind = reject.reason.split(":")[0].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    lines = [f"rejected {len(rejects)} record(s):"] + [f"  {n:6d}  {kind}" for kind, n in
                                                      sorted(counts.items(), key=lambda item: -item[1])]
    lines += [f"  {r.source} [{r.movie_id}]: {r.reason}" for r in rejects[:limit]]
    if len(rejects) > limit:
        where = f"in {report}" if report else "not shown (no rejects.csv is written when prepare stops)"
        lines.append(f"  ... {len(rejects) - limit} more {where}")
    return "\n".join(lines)


def add_extra_train(movies: list[Kept], split: dict[str, list[str]], main_ids: dict[str, str], config: PrepareConfig,
                    progress: bool, spool: MovieSpool | None,
                    rejects: list[Reject]) -> tuple[list[Kept], dict[str, list[str]], dict]:
    """The movies and split with extra_train's valid movies added to train (nothing when it is not set), and what
    dataset.json says of them."""
    if not config.extra_train:
        return movies, split, {}
    extra, extra_rejects = read_extra_train(config, main_ids, progress, spool)
    rejects.extend(extra_rejects)
    spelled = {genre_key(genre): genre for movie in movies for genre in movie.genres}
    extra = unify_spellings(extra, fixed=spelled)
    split = dict(split, train=split["train"] + [movie.movie_id for movie in extra])
    return movies + extra, split, {
        "catalogue": os.path.abspath(config.extra_train), "movies": len(extra), "rejected": len(extra_rejects),
        "ids": [movie.movie_id for movie in extra],
        "rule": "added to train after the split and the genre vocabulary were drawn from the main catalogue, so "
                "dev and test are those it gives without extra_train; its movies may lack posters"}


def text_only_notes(movies: list[Kept], split: dict[str, list[str]]) -> list[Reject]:
    """Each kept movie without a poster, named by its source and id, with why it has none (as rejects are)."""
    part_of = {movie_id: name for name, ids in split.items() for movie_id in ids}
    return [Reject(movie.source, movie.movie_id, f"{part_of[movie.movie_id]}: {movie.no_poster}") for movie in movies
            if not movie.has_poster and movie.movie_id in part_of]


def summarize_text_only(record: dict, notes: list[Reject], report: str, limit: int = 10) -> str:
    """The text-only movies by part, the first few by name, and the report holding every one."""
    lines = [f"kept {record['movies']} text-only movie(s), without a poster ({record['rule']}): "
             + ", ".join(f"{name} {record[name]}" for name in SPLIT_NAMES) + f"; every one named in {report}:"]
    lines += [f"  {note.source} [{note.movie_id}]: {note.reason}" for note in notes[:limit]]
    if len(notes) > limit:
        lines.append(f"  ... {len(notes) - limit} more in {report}")
    return "\n".join(lines)


def prepare(config: PrepareConfig, progress: bool = True) -> dict:
    """Read, validate, split and write a prepared dataset atomically; returns its metadata."""
    if not (config.catalogue and config.out):
        raise ValueError("prepare needs a catalogue and an output folder (out=DIR)")
    if os.path.exists(config.out):
        raise FileExistsError(f"{config.out} already exists; remove it or choose another out=DIR")
    # not inside another prepared dataset; inside the catalogue's folder is fine: readers read only their own files
    refuse_to_write_into(config.out, "out", {})
    run = enclosing(os.path.dirname(os.path.abspath(config.out)), is_run_folder)
    if run:  # training writes into its run directory, and would overwrite the dataset's files
        raise ValueError(f"out={config.out} is inside the training run {run}; a prepared dataset and a run directory "
                         "must be separate folders: choose another out=DIR")
    catalogue = read_catalogue(config.catalogue, config.layout, config.poster_dir or None, config.columns,
                               config.rules.require_poster)
    spool = MovieSpool(os.path.dirname(os.path.abspath(config.out)))  # closed, and gone, when prepare returns
    main_ids: dict[str, str] = {}  # every id of the catalogue's records, for extra_train's
    records = noting_ids(catalogue.records, main_ids) if config.extra_train else catalogue.records
    movies, rejects = validate_all(records, config.rules, config.workers, progress, spool)
    if not movies:
        raise ValueError(f"no valid movie in {config.catalogue}\n{summarize_rejects(rejects, report=None)}")
    movies = unify_spellings(movies)
    split = resolve_split(movies, catalogue.split, config, rejects)
    by_id = {movie.movie_id: movie for movie in movies}
    genres = choose_vocabulary([by_id[movie_id].genres for movie_id in split["train"]], config)
    # drawn before the extra movies join train, so that dev, test and the vocabulary are the main catalogue's alone
    movies, split, extra = add_extra_train(movies, split, main_ids, config, progress, spool, rejects)
    split, vocabulary = apply_vocabulary(movies, split, genres, config.genreless, rejects)
    if extra:  # genreless=drop may have dropped some of them
        train = set(split["train"])
        added = [movie_id for movie_id in extra["ids"] if movie_id in train]
        extra.update(ids=added, movies=len(added))
    check_trainable(split, config, rejects)
    vocabulary.update(rule=(f"the closed list {list(config.genres)}" if config.genres else
                            f"the {len(genres)} most frequent genres of the training part")
                      + (" (the main catalogue's, before extra_train's movies joined it)" if extra else ""),
                      train_genre_counts=genre_counts(movies, split["train"]))
    staging = staging_folder(os.path.dirname(os.path.abspath(config.out)), "prepare")
    try:
        metadata = write_prepared(movies, split, genres, rejects, config, staging, vocabulary, spool,
                                  split_given=catalogue.split is not None, extra=extra)
        os.rename(staging, config.out)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"prepared {sum(len(ids) for ids in split.values())} movies "
          f"({', '.join(f'{n} {len(split[n])}' for n in SPLIT_NAMES)}) into {config.out}")
    print(vocabulary_summary(genres, vocabulary))
    print(describe_split(metadata["split"]))
    if extra:
        print(f"extra_train: {extra['movies']} movie(s) of {config.extra_train} added to train only "
              f"({extra['rejected']} of its records rejected, named in rejects.csv)")
    if metadata["text_only"]["movies"]:
        print(summarize_text_only(metadata["text_only"], text_only_notes(movies, split),
                                  os.path.join(config.out, TEXT_ONLY)))
    if rejects:
        print(summarize_rejects(rejects, report=os.path.join(config.out, "rejects.csv")))
    return metadata


def vocabulary_summary(genres: list[str], vocabulary: dict) -> str:
    """The genre rule in words, with counts: what was kept, what was outside the vocabulary."""
    others = [g for g in vocabulary["train_genre_counts"] if g not in genres]
    what = "kept with no label (genreless=keep)" if vocabulary["genreless_policy"] == "keep" else "dropped"
    return (f"genres: {vocabulary['rule']}: {', '.join(genres)}.\n"
            f"  other genres in train (not predicted): {', '.join(others) or 'none'}.\n"
            f"  {vocabulary['with_other_genres_too']} movie(s) also carry genres outside the vocabulary: kept.\n"
            f"  {vocabulary['with_none_of_the_genres']} movie(s) carry none of its genres: {what}.")


# The flags of the old command line, each with the key=value option that replaced it.
OLD_FLAGS = {"--out": "out=DIR", "--name": "name=NAME", "--layout": "layout=csv", "--poster-dir": "poster_dir=DIR",
             "--column": "columns.plot=Overview", "--num-genres": "num_genres=10", "--genres": "genres=[Drama, Comedy]",
             "--genre-alias": "'rules.genre_aliases={Science Fiction: Sci-Fi}'", "--genreless": "genreless=drop",
             "--min-words": "rules.min_plot_words=15", "--max-words": "rules.max_plot_words=545",
             "--image-size": "rules.image_size=260", "--min-train-movies": "min_train_movies=32", "--seed": "seed=0"}
_OPTION = re.compile(r"[A-Za-z_][\w.]*=")  # key=value; anything else is the catalogue


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m genre_tf.prepare`: a catalogue, --config FILE and key=value options."""
    keys = describe_keys(PrepareConfig).replace("catalogue=\n", "")  # the catalogue is the positional argument
    parser = CommandLine(
        prog="python -m genre_tf.prepare", usage="%(prog)s CATALOGUE [--config FILE] out=DIR [key=value ...]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (key=value, values read as YAML; defaults in genre_tf/config.py):\n  "
               + keys.replace("\n", "\n  "))
    parser.add_argument("--config", default="", metavar="FILE", help="a YAML or JSON file of options")
    parser.add_argument("arguments", nargs="*", metavar="CATALOGUE key=value")
    return parser


def parse_args(argv=None) -> PrepareConfig:
    """The PrepareConfig of a command line; an old flag or a bad option exits with a one-line error."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    for flag in (arg.split("=", 1)[0] for arg in argv):
        if flag in OLD_FLAGS:
            parser.error(f"{flag} is gone: options are key=value now, e.g. {OLD_FLAGS[flag]}")
    args = parser.parse_intermixed_args(argv)  # --config anywhere; key=value before or after the catalogue
    # key=value, unless a file or folder has that name (a catalogue called a=b.csv)
    options = [arg for arg in args.arguments if _OPTION.match(arg) and not os.path.exists(arg)]
    catalogues = [arg for arg in args.arguments if arg not in options]
    if len(catalogues) != 1:
        parser.error(f"expected one catalogue and key=value options, got {catalogues or 'no catalogue'}")
    try:
        config = load_config(args.config, options, PrepareConfig, catalogue=catalogues[0])
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if not config.out:
        parser.error("prepare needs an output folder (out=DIR)")
    return config


def main(argv=None) -> int:
    """`python -m genre_tf.prepare`: 0 when the prepared folder was written, else a one-line error."""
    try:
        prepare(parse_args(argv))
    except (ValueError, OSError) as error:  # OSError: unreadable catalogue, unwritable out=DIR, ...
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
