"""Readers for the three catalogue layouts: the paper's CSV, MM-IMDb folders, and MMF-style JSONL."""
import dataclasses
import itertools
import json
import os
import reprlib
from collections.abc import Callable, Iterable, Iterator

from genre_tf.config import CsvColumns
from genre_tf.data.csv_records import read_records
from genre_tf.data.records import RawMovie, Reject, has_undecodable
from genre_tf.files import InputFileError, read_input_file
from genre_tf.limits import MAX_METADATA_BYTES

SPLIT_NAMES = ("train", "dev", "test")
_HEADER = reprlib.Repr()  # a header shown in an error: bounded, whatever the file holds
_HEADER.maxlist, _HEADER.maxstring = 30, 60


class Records:
    """A catalogue's records, read from its files afresh each time they are iterated: prepare validates each one
    as it is read, and holding 100,000 raw records (their plots) made its peak grow with the catalogue."""

    def __init__(self, read: Callable[[], Iterator[RawMovie | Reject]]):
        self._read = read

    def __iter__(self) -> Iterator[RawMovie | Reject]:
        return self._read()


@dataclasses.dataclass
class Catalogue:
    """What a reader found: records (raw or already rejected), and a split when the layout defines one."""

    records: Iterable[RawMovie | Reject]
    split: dict[str, list[str]] | None = None


def read_paper_csv(path: str, poster_dir: str | None = None, columns: CsvColumns | None = None,
                   require_poster: bool = True) -> Catalogue:
    """Read the paper's layout: one CSV row per movie, posters relative to (and inside) poster_dir; without
    require_poster the poster column may be absent (every movie then names no poster).

    The header is checked at once; the rows are read when the records are iterated.
    """
    columns = columns or CsvColumns()
    poster_dir = poster_dir or os.path.dirname(os.path.abspath(path))
    header = _csv_header(path, columns, require_poster)
    return Catalogue(Records(lambda: _csv_rows(path, header, poster_dir, columns)))


def _csv_header(path: str, columns: CsvColumns, require_poster: bool) -> list[str]:
    """The CSV's header, refused when unreadable or lacking a column the reader needs."""
    # predict's bounded reader: a row over its limit or with an unterminated quote is refused on its own line and
    # reading goes on (Python's csv would swallow the rest of the file into one field); surrogateescape keeps a
    # row with bad bytes readable so that only that row is rejected, naming the column.
    with open(path, "rb") as handle:
        first = next(read_records(handle, errors="surrogateescape"), None)
    if first is not None and first.error:
        raise ValueError(f"{path}:{first.line}: the header cannot be read: {first.error}")
    header = list(first.fields) if first else []
    if any(has_undecodable(name) for name in header):
        raise ValueError(f"{path}:1: the header is not UTF-8 text; is this a CSV file? (save it as UTF-8)")
    missing = [getattr(columns, name) for name in CsvColumns.required
               if getattr(columns, name) not in header and (require_poster or name != "poster")]
    if missing:
        without = (" A catalogue without posters: rules.require_poster=false keeps its movies as text-only."
                   if columns.poster in missing else "")
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {_HEADER.repr(header)}. Map "
                         "columns with columns.FIELD=HEADER (e.g. columns.plot=Overview), or "
                         f"CsvColumns(plot='Overview').{without}")
    _refuse_repeated_columns(header, path, columns)
    return header


def _csv_rows(path: str, header: list[str], poster_dir: str, columns: CsvColumns) -> Iterator[RawMovie | Reject]:
    """The CSV's rows after the header, one record at a time."""
    with open(path, "rb") as handle:
        rows = read_records(handle, errors="surrogateescape")
        next(rows, None)  # the header, checked by _csv_header
        for row in rows:
            source = f"{path}:{row.line}"
            if row.error:
                yield Reject(source, "", f"unreadable CSV row: {row.error}")
            elif len(row.fields) != len(header):
                id_field = header.index(columns.id)
                movie_id = row.fields[id_field].strip() if id_field < len(row.fields) else ""
                yield Reject(source, movie_id, "wrong number of fields in the row")
            else:
                yield _csv_record(dict(zip(header, row.fields, strict=True)), source, poster_dir, columns)


def _refuse_repeated_columns(header: list[str], path: str, columns: CsvColumns) -> None:
    """Refuse a header naming a column the reader uses twice: a row read by name would silently keep the last."""
    used = {getattr(columns, field.name) for field in dataclasses.fields(columns)}
    repeated = sorted(name for name in used if header.count(name) > 1)  # other repeats are never read
    if repeated:
        raise ValueError(f"{path}: column(s) {repeated} appear more than once in the header; rename or remove "
                         "the extra ones (prepare does not guess which is right), or map columns with "
                         "columns.FIELD=HEADER.")


def _csv_record(row: dict, source: str, poster_dir: str, columns: CsvColumns) -> RawMovie | Reject:
    movie_id = (row.get(columns.id) or "").strip()
    bad = [name for name, value in row.items() if has_undecodable(value)]
    if bad:
        return Reject(source, movie_id.encode("utf-8", "replace").decode(), f"not valid UTF-8 in column(s) {bad}")
    poster = row.get(columns.poster)
    absent = "no poster column" if poster is None else "empty poster cell"
    poster = (poster or "").strip()
    return RawMovie(movie_id=movie_id, plot=row[columns.plot], genres=row[columns.genres],
                    poster=os.path.join(poster_dir, poster) if poster else None, source=source,
                    title=row.get(columns.title, ""), year=row.get(columns.year),
                    language=row.get(columns.language, ""), poster_root=poster_dir, poster_absent=absent)


def _load_json(path: str, root: str):
    """A small JSON file inside root: a FIFO, a device or a huge file is refused, not read."""
    return json.loads(read_input_file(path, root, MAX_METADATA_BYTES, "JSON").decode("utf-8"))


def _languages(value) -> str:
    """MM-IMDb's languages: a list of names, or (in some files) one name as a string."""
    if isinstance(value, str):
        return value
    return ", ".join(str(name) for name in value) if isinstance(value, list) else ""


def _refuse_repeated_ids(repeated: dict[str, list[str]], where: str) -> None:
    """Refuse a split that puts an id in more than one place: the movie would be trained on and scored."""
    if not repeated:
        return
    shown = "; ".join(f"{movie_id!r} in {' and '.join(places)}" for movie_id, places in list(repeated.items())[:10])
    more = f"; and {len(repeated) - 10} more" if len(repeated) > 10 else ""
    raise ValueError(f"{where}: {len(repeated)} id(s) listed more than once in the split, which would leak "
                     f"movies between its parts: {shown}{more}. List each id once; prepare does not guess which "
                     "place is right.")


def _longest(value):
    """MM-IMDb stores several plot versions; the paper-style single plot is the longest."""
    if isinstance(value, list):
        texts = [text for text in value if isinstance(text, str)]
        return max(texts, key=len) if texts else (value or "")
    return value


def read_split_file(path: str) -> dict[str, list[str]]:
    """A split.json of train/dev/test id lists, each id in exactly one list, once."""
    try:
        split = _load_json(path, os.path.dirname(os.path.abspath(path)))
    except (InputFileError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable split file: {error}") from None
    if not isinstance(split, dict) or not all(isinstance(split.get(name), list) for name in SPLIT_NAMES):
        raise ValueError(f"{path}: a split file needs 'train', 'dev' and 'test' lists of ids")
    split = {name: [str(movie_id).strip() for movie_id in split[name]] for name in SPLIT_NAMES}
    places: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        for movie_id in split[name]:
            places.setdefault(movie_id, []).append(name)
    _refuse_repeated_ids({i: p for i, p in places.items() if len(p) > 1}, path)
    return split


def read_mmimdb(folder: str) -> Catalogue:
    """Read MM-IMDb: <id>.json beside <id>.jpeg, with an optional split.json defining the split."""
    split_path = os.path.join(folder, "split.json")
    return Catalogue(Records(lambda: _mmimdb_records(folder)),
                     read_split_file(split_path) if os.path.exists(split_path) else None)


def _mmimdb_records(folder: str) -> Iterator[RawMovie | Reject]:
    """The folder's <id>.json files in name order, one record at a time."""
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json") or name == "split.json":
            continue
        path = os.path.join(folder, name)
        movie_id = name[: -len(".json")]
        try:
            meta = _load_json(path, folder)
        except (InputFileError, UnicodeDecodeError, json.JSONDecodeError) as error:
            yield Reject(path, movie_id, f"unreadable JSON: {error}")
            continue
        if not isinstance(meta, dict):
            yield Reject(path, movie_id, "JSON is not an object")
            continue
        poster = next((os.path.join(folder, movie_id + ext) for ext in (".jpeg", ".jpg", ".png")
                       if os.path.exists(os.path.join(folder, movie_id + ext))),
                      os.path.join(folder, movie_id + ".jpeg"))
        yield RawMovie(movie_id=movie_id, plot=_longest(meta.get("plot", "")), genres=meta.get("genres", []),
                       poster=poster, source=path, title=meta.get("title", ""), year=meta.get("year"),
                       language=_languages(meta.get("languages")), poster_root=folder)


def _read_jsonl_file(path: str, image_root: str) -> Iterator[RawMovie | Reject]:
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            source = f"{path}:{line_number}"
            if not line.strip():
                continue
            try:
                item = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                yield Reject(source, "", f"unreadable JSON line: {error}")
                continue
            if not isinstance(item, dict):
                yield Reject(source, "", "JSON line is not an object")
                continue
            image = item.get("image") or item.get("img")
            yield RawMovie(movie_id=str(item.get("id", "")), plot=item.get("text", ""),
                           genres=item.get("label", item.get("genres", [])),
                           poster=os.path.join(image_root, image) if isinstance(image, str) and image else None,
                           source=source, title=item.get("title", ""), year=item.get("year"), poster_root=image_root)


def read_jsonl(path: str, image_root: str | None = None) -> Catalogue:
    """Read MMF / Hugging Face style JSONL ({"id", "text", "image", "label"}).

    A folder holding train.jsonl, dev.jsonl and test.jsonl defines the split by those files; an id in
    two of them is refused (a repeat within one file is an ordinary duplicate, rejected by prepare).
    """
    if os.path.isfile(path):
        root = image_root or os.path.dirname(os.path.abspath(path))
        return Catalogue(Records(lambda: _read_jsonl_file(path, root)))
    root = image_root or path
    files = [os.path.join(path, f"{name}.jsonl") for name in SPLIT_NAMES]
    if not all(os.path.isfile(file_path) for file_path in files):
        raise ValueError(f"{path}: a JSONL folder needs the files train.jsonl, dev.jsonl and test.jsonl")
    split = _jsonl_folder_split(path, files, root)
    return Catalogue(Records(lambda: itertools.chain.from_iterable(_read_jsonl_file(f, root) for f in files)), split)


def _jsonl_folder_split(path: str, files: list[str], root: str) -> dict[str, list[str]]:
    """The split the train, dev and test files define, read at once so that an id in two of them is refused
    before anything is validated; only the ids are kept (the records are read again when iterated)."""
    split: dict[str, list[str]] = {}
    places: dict[str, dict[str, str]] = {}
    for name, file_path in zip(SPLIT_NAMES, files, strict=True):
        ids = []
        for record in _read_jsonl_file(file_path, root):
            if isinstance(record, RawMovie) and record.movie_id.strip():
                ids.append(record.movie_id.strip())
                places.setdefault(record.movie_id.strip(), {}).setdefault(name, os.path.basename(record.source))
        split[name] = list(dict.fromkeys(ids))
    _refuse_repeated_ids({i: list(p.values()) for i, p in places.items() if len(p) > 1}, path)
    return split


def detect_format(path: str) -> str:
    """Guess the layout of a catalogue path: 'csv', 'mmimdb' or 'jsonl'."""
    if os.path.isfile(path):
        if path.endswith(".csv"):
            return "csv"
        if path.endswith(".jsonl"):
            return "jsonl"
    elif os.path.isdir(path):
        names = os.listdir(path)
        if any(name.endswith(".jsonl") for name in names):
            return "jsonl"
        if any(name.endswith(".json") for name in names):
            return "mmimdb"
    raise ValueError(f"cannot tell the layout of {path!r}: give a .csv file, a .jsonl file or folder, "
                     "or an MM-IMDb folder of <id>.json and <id>.jpeg")


def read_catalogue(path: str, layout: str = "auto", poster_dir: str | None = None,
                   columns: CsvColumns | None = None, require_poster: bool = True) -> Catalogue:
    """Read a catalogue in any supported layout (a CSV without a poster column only when not require_poster)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"catalogue not found: {path}")
    layout = detect_format(path) if layout == "auto" else layout
    needs = {"csv": (os.path.isfile, "a CSV file"), "mmimdb": (os.path.isdir, "a folder of <id>.json and <id>.jpeg"),
             "jsonl": (lambda p: os.path.isfile(p) or os.path.isdir(p), "a .jsonl file or a folder of them")}
    if layout not in needs:
        raise ValueError(f"unknown layout {layout!r}: use auto, csv, mmimdb or jsonl")
    is_right_kind, wanted = needs[layout]
    if not is_right_kind(path):
        kind = "a folder" if os.path.isdir(path) else "a file" if os.path.isfile(path) else "not a file or folder"
        raise ValueError(f"{path} is {kind}; the {layout} layout reads {wanted}")
    if layout == "csv":
        return read_paper_csv(path, poster_dir, columns, require_poster)
    if layout == "mmimdb":
        return read_mmimdb(path)
    return read_jsonl(path, poster_dir)
