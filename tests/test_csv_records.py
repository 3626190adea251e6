"""genre_tf.data.csv_records: the bounded CSV reader gives csv's records, and every line lands in exactly one record."""
import csv
import io
import random

import pytest

from genre_tf.data.csv_records import read_records


def records(data: bytes, limit: int = 1 << 20) -> list[tuple]:
    return [(record.line, list(record.fields), record.error) for record in read_records(io.BytesIO(data), limit)]


def test_well_formed_files_read_as_the_csv_module_reads_them():
    rng = random.Random(0)
    for _ in range(300):
        rows = [["".join(rng.choice('ab ,"\n\r\x00é') for _ in range(rng.randint(0, 8)))
                 for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))]
        text = io.StringIO()
        csv.writer(text, lineterminator=rng.choice(["\n", "\r\n"])).writerows(rows)
        expected = [row for row in csv.reader(io.StringIO(text.getvalue(), newline="")) if row]
        assert [fields for _, fields, _ in records(text.getvalue().encode("utf-8"))] == expected, rows


def test_lines_quotes_blank_lines_and_a_byte_order_mark():
    data = b'\xef\xbb\xbfid,plot\nm1,"a ""q"" b"\n\nm2,x\r\nm3,"multi\nline",z\rm4,'
    assert records(data) == [(1, ["id", "plot"], ""), (2, ["m1", 'a "q" b'], ""), (4, ["m2", "x"], ""),
                             (5, ["m3", "multi\nline", "z"], ""), (7, ["m4", ""], "")]


@pytest.mark.parametrize("data, expected", [
    (b'a,b\nm2,"unterminated,p2\nm3,plot3,p3\nm4,"quoted",p4\n',
     [(1, ["a", "b"], ""), (2, [], "a quote inside a quoted field is followed by 'q', not by a comma or the line's "
                                  "end (an unterminated quote, or a quote not doubled)"),
      (3, ["m3", "plot3", "p3"], ""), (4, ["m4", "quoted", "p4"], "")]),
    (b'id\nok\n"never closed\nm3\n',
     [(1, ["id"], ""), (2, ["ok"], ""), (3, [], "a quoted field is never closed (the file ends inside it)"),
      (4, ["m3"], "")]),
    (b"id,plot\nm1,\xe9t\xe9\nm2,ok\n",
     [(1, ["id", "plot"], ""), (2, [], "the row is not UTF-8 text (invalid continuation byte at byte 0 of a field)"),
      (3, ["m2", "ok"], "")]),
], ids=["unterminated_quote", "closed_by_end_of_file", "not_utf8"])
def test_a_broken_row_is_refused_on_its_line_and_the_next_line_is_read(data, expected):
    assert records(data) == expected


def test_a_row_over_the_limit_is_read_to_its_end_without_being_kept():
    data = b"id,plot\nm1," + b"x" * 3000 + b'\nm2,"' + b"y\n" * 2000 + b'"\nm3,ok\n'
    assert records(data, limit=1000) == [
        (1, ["id", "plot"], ""), (2, [], "the row is longer than 1000 bytes (the CSV reader's limit)"),
        (3, [], "the row is longer than 1000 bytes (the CSV reader's limit)"), (2004, ["m3", "ok"], "")]
