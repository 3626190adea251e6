"""Movie records: what a reader yields, what validation keeps, and why a record was rejected."""
import dataclasses
import functools
import os
import re
import unicodedata
from collections.abc import Sequence

from genre_tf.config import ValidationRules
from genre_tf.files import InputFileError, InputFileNotFoundError, read_poster_file
from genre_tf.limits import MAX_GENRE_CHARS, oversized_plot

_GENRE_SEPARATORS = re.compile(r"[,|;]")
# Characters a genre name may not hold: list separators (the served `genres` output joins names with ", ";
# report.md's tables use |) and markup, which reports and dashboards would render.
_GENRE_FORBIDDEN = re.compile(r"[,|;<>*`\[\]\x00-\x1f\x7f]")
# Letters that show nothing: Hangul fillers. A plot needs a letter or digit besides these to be a plot.
FILLERS = "\u115f\u1160\u3164\uffa0"
# Chinese and Japanese write no spaces between words: each Han or kana character counts as a word,
# and their punctuation separates words as a space does. Other scripts count whitespace-separated words.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_PUNCTUATION = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
_WORD = re.compile(f"[{CJK}]|[^\\s{CJK}{_CJK_PUNCTUATION}]+")


@dataclasses.dataclass(frozen=True)
class RawMovie:
    """One movie as a reader found it, before validation; `source` names its file and line."""

    movie_id: str
    plot: object
    genres: object
    poster: str | bytes | None  # a file path, or the encoded bytes themselves
    source: str
    title: str = ""
    year: object = None
    language: str = ""
    poster_root: str | None = None  # a poster path must resolve inside this folder (default: the poster's own)
    poster_absent: str = "no poster given"  # why, when `poster` is empty: the reader knows (no column, empty cell)


@dataclasses.dataclass(frozen=True)
class Movie:
    """A validated movie: non-empty plot, non-blank genres, and its poster as serving resizes it, stored as PNG
    (empty for a text-only movie, whose `no_poster` says why it has none)."""

    movie_id: str
    title: str
    plot: str
    genres: tuple
    poster_png: bytes
    year: int | None
    language: str
    source: str
    no_poster: str = ""

    @property
    def has_poster(self) -> bool:
        return not self.no_poster


@dataclasses.dataclass(frozen=True)
class Reject:
    """A record that was not kept, named by its source and id, with the reason."""

    source: str
    movie_id: str
    reason: str


class RecordError(ValueError):
    """A record that fails validation, with the reason in its message."""


class MissingPoster(RecordError):
    """A record whose poster is absent (none named, or a file that does not exist), not bad: with
    rules.require_poster=false its movie is kept as text-only."""


def has_undecodable(text: str) -> bool:
    """Whether text holds bytes that were not UTF-8 (kept as surrogates by errors='surrogateescape')."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def visible_text(text: str) -> str:
    """text in Unicode NFC, without control and format characters (NUL, zero-width spaces, BOMs), spaces collapsed.

    BERT's tokenizer drops those characters too, so a plot holding nothing else is no plot.
    """
    text = unicodedata.normalize("NFC", text)
    if not text.isprintable():
        text = "".join(" " if ch.isspace() else ch for ch in text
                       if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    return " ".join(text.split())


def id_key(movie_id: str) -> str:
    """The identity of a movie id: ids that differ only in case, compatibility forms (fullwidth letters) or
    invisible format characters (a zero-width space) are one movie (Unicode NFKC, then case folding)."""
    text = unicodedata.normalize("NFKC", movie_id)
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf")).casefold()


def has_words(text: str) -> bool:
    """Whether text holds a letter or a digit (Unicode categories L and N) other than a blank filler.

    Punctuation, symbols (U+2800, a blank braille cell), combining marks and variation selectors alone are
    no plot; the SavedModel applies the same rule (serving.WORDLESS).
    """
    return any(unicodedata.category(ch)[0] in "LN" and ch not in FILLERS for ch in text)


def genre_key(name: str) -> str:
    """The identity of a genre name: Unicode form (NFC or NFD), case, surrounding and repeated spaces do not matter."""
    return visible_text(name).casefold()


@functools.lru_cache(maxsize=8)
def _alias_lookup(aliases: tuple) -> dict:
    return {genre_key(alias): visible_text(target) for alias, target in aliases}


def parse_genres(value, aliases: Sequence[tuple[str, str]] = ()) -> tuple:
    """Parse a genre list ('Drama, Comedy', 'Drama|Comedy' or a list) into unique names, any vocabulary.

    Names are stripped and their inner spaces collapsed; an alias maps to its target. Which spelling
    of a name differing only in case wins is decided over the whole catalogue (`unify_spellings`).
    """
    if isinstance(value, str):
        parts = _GENRE_SEPARATORS.split(value) if value.strip() else []
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise RecordError(f"genres must be a string or a list, got {type(value).__name__}")
    if not parts:
        raise RecordError("no genres")
    lookup = _alias_lookup(tuple(aliases))
    genres, seen = [], set()
    for part in parts:
        if not isinstance(part, str):
            raise RecordError(f"genre {part!r} is not a string")
        if has_undecodable(part):
            raise RecordError("genre is not valid UTF-8")
        if not visible_text(part):
            raise RecordError(f"blank genre in {str(value)[:80]!r}")
        forbidden = _GENRE_FORBIDDEN.search(part)
        if forbidden:
            raise RecordError(f"genre {part[:40]!r} holds {forbidden.group()!r}: genre names may not hold list "
                              "separators (, | ;), markup (< > * ` [ ]) or control characters")
        if len(part) > MAX_GENRE_CHARS or not has_words(part):
            raise RecordError(f"genre {part[:40]!r} is not a genre name: 1 to {MAX_GENRE_CHARS} characters with "
                              "a letter or digit")
        name = lookup.get(genre_key(part), visible_text(part))
        if genre_key(name) not in seen:
            seen.add(genre_key(name))
            genres.append(name)
    return tuple(genres)


def parse_year(value) -> int | None:
    """A release year as an int, None when absent; a malformed year is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        year = int(str(value).strip()[:4]) if not isinstance(value, int) else value
    except ValueError:
        raise RecordError(f"year {value!r} is not a year") from None
    if not 1850 <= year <= 2100:
        raise RecordError(f"year {year} is out of range")
    return year


def count_words(text: str) -> int:
    """Whitespace-separated words, each Chinese or Japanese character counting as one word."""
    return len(_WORD.findall(text))


def check_plot(plot, rules: ValidationRules) -> str:
    """Return the plot stripped, or raise RecordError if it is not text or outside the word limits."""
    if not isinstance(plot, str):
        raise RecordError(f"plot must be text, got {type(plot).__name__}")
    if has_undecodable(plot):
        raise RecordError("plot is not valid UTF-8")
    if reason := oversized_plot(plot):  # before any per-character work
        raise RecordError(reason)
    plot = visible_text(plot)
    if not plot:
        raise RecordError("empty plot")
    if not has_words(plot):
        raise RecordError("empty plot: no letter or digit")
    words = count_words(plot)
    if words < rules.min_plot_words:
        raise RecordError(f"plot too short: {words} words (min {rules.min_plot_words})")
    if words > rules.max_plot_words:
        raise RecordError(f"plot too long: {words} words (max {rules.max_plot_words})")
    return plot


def read_poster_bytes(poster, root: str | None = None, absent: str = "no poster given") -> bytes:
    """The encoded poster: the bytes given, or the file read by read_poster_file inside `root` (default: its folder).

    MissingPoster when none is named (`absent` says why) or the file does not exist; a path outside `root` is
    refused as such (RecordError) before anything is looked for there.
    """
    if isinstance(poster, bytes):
        return poster
    if not poster:
        raise MissingPoster(absent)
    try:
        return read_poster_file(poster, root or os.path.dirname(os.path.abspath(poster)))
    except InputFileNotFoundError as error:
        raise MissingPoster(str(error)) from None
    except InputFileError as error:
        raise RecordError(str(error)) from None


def validate_movie(raw: RawMovie, rules: ValidationRules) -> Movie:
    """Validate one raw record into a Movie, or raise RecordError naming the reason."""
    movie_id = str(raw.movie_id or "").strip()
    if not movie_id:
        raise RecordError("empty id")
    plot = check_plot(raw.plot, rules)
    genres = parse_genres(raw.genres, rules.genre_aliases)
    year = parse_year(raw.year)
    # titles and languages are stored as plots are (NFC, no NUL or other control and format characters): they
    # reach reports, predict's output and terminals
    title, language = visible_text(str(raw.title or "")), visible_text(str(raw.language or ""))
    try:
        poster = read_poster_bytes(raw.poster, raw.poster_root, raw.poster_absent)
    except MissingPoster as missing:
        if rules.require_poster:
            raise
        return Movie(movie_id=movie_id, title=title, plot=plot, genres=genres, poster_png=b"", year=year,
                     language=language, source=raw.source, no_poster=str(missing))
    # Imported here: images loads TensorFlow, which `prepare --help` and the readers do without.
    from genre_tf.data.images import PosterError, load_poster, prepared_poster

    try:
        load_poster(poster, rules.min_poster_side)  # Pillow names what is wrong with a bad file
        # The pixels come from the TensorFlow decoder the SavedModel runs, not from Pillow: one poster pipeline.
        poster_png = prepared_poster(poster, rules.image_size)
    except PosterError as error:
        raise RecordError(str(error)) from None
    return Movie(movie_id=movie_id, title=title, plot=plot, genres=genres, poster_png=poster_png, year=year,
                 language=language, source=raw.source)
