"""A CSV reader of our own limits: each record comes back as its fields, or as the reason it cannot be read.

Python's csv module aborts the whole file on a field over its size limit, and an unterminated quote makes it
swallow every following line into one field. Here a record over MAX_CSV_RECORD_BYTES is read to its end
without being kept and comes back refused; a quoted field that is never closed properly (the file ends inside
it, or a quote inside it is followed by something other than a quote, a comma or the end of the line) refuses
the record on the line where it starts, and reading resumes on the next line. So every line of the file ends
up in exactly one record, read or refused. The dialect is csv's default (excel): commas, double quotes doubled
inside quoted fields, \\n, \\r\\n or \\r line ends, a UTF-8 byte-order mark skipped.
"""
import dataclasses
import re
from collections.abc import Iterator
from typing import BinaryIO

from genre_tf.limits import MAX_CSV_RECORD_BYTES

CHUNK_BYTES = 1 << 16
QUOTE, COMMA, CR, LF = ord('"'), ord(","), ord("\r"), ord("\n")
UNQUOTED_END = re.compile(rb"[,\r\n]")


@dataclasses.dataclass(frozen=True)
class CsvRecord:
    """One record: the line it starts on, its fields (empty when refused), and why it was refused."""

    line: int
    fields: tuple[str, ...] = ()
    error: str = ""


class MalformedRecord(Exception):
    """A quoted field that is not closed properly: the record's first line is refused, reading resumes after it."""


class _Scanner:
    """Bytes of a seekable binary file, a chunk at a time, with the current line number."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.buffer, self.pos, self.line = handle, b"", 0, 1

    def peek(self) -> int | None:
        if self.pos >= len(self.buffer):
            self.buffer, self.pos = self.handle.read(CHUNK_BYTES), 0
        return self.buffer[self.pos] if self.buffer else None

    def offset(self) -> int:
        return self.handle.tell() - (len(self.buffer) - self.pos)

    def seek(self, offset: int, line: int) -> None:
        self.handle.seek(offset)
        self.buffer, self.pos, self.line = b"", 0, line

    def take(self, end: int, field: bytearray, budget: list[int]) -> None:
        """Move to `end` in the buffer, keeping the bytes passed while the record's byte budget lasts."""
        piece = self.buffer[self.pos:end]
        self.line += piece.count(b"\n")
        budget[0] -= len(piece)
        if budget[0] >= 0:
            field += piece
        self.pos = end

    def skip_line(self) -> None:
        """Move past the end of the current physical line (\\n), reading at most a chunk at a time."""
        while self.peek() is not None:
            end = self.buffer.find(b"\n", self.pos)
            if end >= 0:
                self.pos, self.line = end + 1, self.line + 1
                return
            self.pos = len(self.buffer)


def _quoted_field(scanner: _Scanner, field: bytearray, budget: list[int]) -> None:
    scanner.pos += 1  # the opening quote
    while True:
        if scanner.peek() is None:
            raise MalformedRecord("a quoted field is never closed (the file ends inside it)")
        end = scanner.buffer.find(b'"', scanner.pos)
        if end < 0:
            scanner.take(len(scanner.buffer), field, budget)
            continue
        scanner.take(end, field, budget)
        scanner.pos += 1
        after = scanner.peek()
        if after == QUOTE:  # a doubled quote stands for one
            scanner.take(scanner.pos + 1, field, budget)
        elif after in (COMMA, CR, LF, None):
            return
        else:
            raise MalformedRecord(f"a quote inside a quoted field is followed by {chr(after)!r}, not by a comma or "
                                  "the line's end (an unterminated quote, or a quote not doubled)")


def _unquoted_field(scanner: _Scanner, field: bytearray, budget: list[int]) -> None:
    while scanner.peek() is not None:
        match = UNQUOTED_END.search(scanner.buffer, scanner.pos)
        scanner.take(match.start() if match else len(scanner.buffer), field, budget)
        if match:
            return


def _record_fields(scanner: _Scanner, limit: int) -> tuple[list[bytearray], bool, bool]:
    """The raw fields of the record at the scanner, whether it was over the limit, and whether it was blank."""
    fields, budget, quoted = [], [limit], False
    while True:
        field = bytearray()
        if scanner.peek() == QUOTE:
            quoted = True
            _quoted_field(scanner, field, budget)
        else:
            _unquoted_field(scanner, field, budget)
        fields.append(field)
        separator = scanner.peek()
        scanner.pos += separator is not None
        if separator == COMMA:
            continue
        if separator == CR and scanner.peek() == LF:
            scanner.pos += 1
        if separator in (CR, LF):
            scanner.line += 1
        return fields, budget[0] < 0, fields == [bytearray()] and not quoted and separator is not None


def read_records(handle: BinaryIO, limit: int = MAX_CSV_RECORD_BYTES, errors: str = "strict") -> Iterator[CsvRecord]:
    """Every record of a CSV file opened in binary mode (seekable), blank lines skipped. With
    errors="surrogateescape" a field that is not UTF-8 comes back with its bytes escaped, for the caller to name."""
    scanner = _Scanner(handle)
    if scanner.peek() is not None and scanner.buffer.startswith(b"\xef\xbb\xbf"):
        scanner.pos = 3
    while scanner.peek() is not None:
        line, start = scanner.line, scanner.offset()
        try:
            fields, too_long, blank = _record_fields(scanner, limit)
        except MalformedRecord as error:
            scanner.seek(start, line)
            scanner.skip_line()
            yield CsvRecord(line, error=str(error))
            continue
        if too_long:
            yield CsvRecord(line, error=f"the row is longer than {limit} bytes (the CSV reader's limit)")
        elif not blank:
            yield _decoded(line, fields, errors)


def _decoded(line: int, fields: list[bytearray], errors: str = "strict") -> CsvRecord:
    try:
        return CsvRecord(line, tuple(field.decode("utf-8", errors) for field in fields))
    except UnicodeDecodeError as error:
        return CsvRecord(line, error=f"the row is not UTF-8 text ({error.reason} at byte {error.start} of a field)")
