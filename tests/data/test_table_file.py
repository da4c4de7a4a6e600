"""load_table_file / stream_table_file: CSV and Parquet through a column mapping."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freshrec.data import ColumnMapping, load_table_file, stream_table_file
from freshrec.errors import ConfigError, DataError
from freshrec.features import Batch, hash_ids

MAPPING = {
    "spec": {
        "sparse": [
            {"name": "user", "table": "user"},
            {"name": "item"},
            {"name": "tags", "multi_valued": True, "pooling": "mean"},
        ],
        "dense": [{"name": "price", "transform": "log1p", "fill_missing": 0.0}],
        "labels": ["clicked"],
    },
    "columns": {"user": "uid", "item": "sku"},
    "event_time": "ts",
    "weights": "w",
}

CSV = """uid,sku,tags,price,clicked,ts,w,extra
alice,10,1|2|3,9.5,1,300,1.0,x
bob,11,,,0,100,0.5,y
alice,12,7,0.0,0,200,2.0,z
"""


def test_csv_with_mapping(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text(CSV)
    ds = load_table_file(p, MAPPING)
    b = ds.encode()
    # sorted by ts: bob (100), alice/12 (200), alice/10 (300)
    np.testing.assert_array_equal(b.event_time, [100, 200, 300])
    np.testing.assert_array_equal(b.sparse["item"].values, [11, 12, 10])  # integers as they are
    np.testing.assert_array_equal(b.sparse["user"].values, hash_ids(["bob", "alice", "alice"]))
    tags = b.sparse["tags"]
    assert [tags.values[tags.offsets[i] : tags.offsets[i + 1]].tolist() for i in range(3)] == [
        [],
        [7],
        [1, 2, 3],
    ]
    np.testing.assert_allclose(b.dense[:, 0], np.log1p([0.0, 0.0, 9.5]).astype(np.float32))
    np.testing.assert_array_equal(b.labels[:, 0], [0, 0, 1])
    np.testing.assert_array_equal(b.weights, [0.5, 2.0, 1.0])


def test_parquet_with_lists_and_timestamps(tmp_path):
    table = pa.table(
        {
            "uid": ["a", "b", "c", "d"],
            "sku": pa.array([1, 2, 3, 4], pa.int32()),
            "tags": [["x", "y"], [], None, ["z"]],
            "price": [1.0, None, 3.0, 4.0],
            "clicked": [1, 0, 0, 1],
            "ts": pa.array([4, 3, 2, 1], pa.timestamp("s")),
            "w": [1.0, 1.0, 1.0, 1.0],
        }
    )
    p = tmp_path / "events.parquet"
    pq.write_table(table, p)
    b = load_table_file(p, MAPPING).encode()
    np.testing.assert_array_equal(b.event_time, [1, 2, 3, 4])
    np.testing.assert_array_equal(b.sparse["item"].values, [4, 3, 2, 1])
    assert b.sparse["tags"].lengths.tolist() == [1, 0, 0, 2]
    np.testing.assert_array_equal(b.sparse["tags"].values, hash_ids(["z", "x", "y"]))
    streamed = Batch.concat(list(stream_table_file(p, MAPPING, batch_size=3)))
    assert streamed.size == 4
    np.testing.assert_array_equal(streamed.event_time, [4, 3, 2, 1])  # streams keep file order


def test_stream_csv_in_small_blocks(tmp_path):
    rows = [f"u{i},{i},{i}|{i + 1},{i}.5,{i % 2},{i},1.0,e\n" for i in range(2000)]
    p = tmp_path / "big.csv"
    p.write_text("uid,sku,tags,price,clicked,ts,w,extra\n" + "".join(rows))
    batches = list(stream_table_file(p, MAPPING, batch_size=256, block_size=4096))
    assert sum(b.size for b in batches) == 2000 and all(b.size == 256 for b in batches[:-1])
    full = load_table_file(p, MAPPING).encode()
    streamed = Batch.concat(batches)
    for k in full.sparse:
        assert streamed.sparse[k] == full.sparse[k]
    np.testing.assert_array_equal(streamed.dense, full.dense)


def test_mapping_from_toml(tmp_path):
    (tmp_path / "m.toml").write_text(
        'event_time = "ts"\n[columns]\nuser = "uid"\n[spec]\nlabels = ["clicked"]\n[[spec.sparse]]\nname = "user"\n'
    )
    m = ColumnMapping.from_file(tmp_path / "m.toml")
    p = tmp_path / "e.csv"
    p.write_text(CSV)
    assert load_table_file(p, m).encode().size == 3


def test_unknown_feature_in_mapping():
    bad = {**MAPPING, "columns": {"user": "uid", "seller": "sid"}}
    with pytest.raises(ConfigError, match=r"columns maps unknown features \['seller'\]"):
        ColumnMapping.from_dict(bad)
    with pytest.raises(ConfigError, match="colour"):
        ColumnMapping.from_dict({**MAPPING, "colour": "red"})


def test_bad_csv_files(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text(CSV.replace("price", "cost"))
    with pytest.raises(DataError, match=r"e.csv: missing column 'price' \(for dense feature 'price'\)"):
        load_table_file(p, MAPPING)
    p.write_text(CSV.replace("9.5", "cheap"))
    with pytest.raises(DataError, match=r"e.csv: column 'price' line 2 \(data row 1\) value 'cheap' is not double"):
        load_table_file(p, MAPPING)
    p.write_text("")
    with pytest.raises(DataError, match=r"e.csv: file is empty"):
        load_table_file(p, MAPPING)
    p.write_text(CSV.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"e.csv: no data rows"):
        load_table_file(p, MAPPING)
    no_fill = {**MAPPING, "spec": {**MAPPING["spec"], "dense": [{"name": "price"}]}}
    p.write_text(CSV)
    with pytest.raises(DataError, match=r"e.csv: dense feature 'price' has 1 missing .*set fill_missing"):
        load_table_file(p, no_fill)
    p.write_text(CSV.replace("bob,11", "bob,"))
    with pytest.raises(DataError, match=r"e.csv: sparse slot 'item' has 1 missing values"):
        load_table_file(p, MAPPING)
    header, *rows = CSV.splitlines()
    p.write_text("\n".join([header + ",price", *(r + ",1.0" for r in rows)]) + "\n")  # a second 'price'
    with pytest.raises(DataError, match=r"e.csv: the header names column\(s\) \['price'\] more than once"):
        load_table_file(p, MAPPING)


def test_a_byte_order_mark_a_bad_timestamp_and_an_unreadable_file(tmp_path, monkeypatch):
    """A UTF-8 BOM (Excel's "CSV UTF-8") made the first column '\ufeffuid' and a valid file
    was refused; a bad timestamp was reported at row 0 with a good value; an unreadable file
    raised PermissionError from pyarrow."""
    import pyarrow.csv as pacsv

    from freshrec.data._read import CsvFormat, read_csv

    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + CSV.encode())
    assert len(load_table_file(p, MAPPING)) == 3
    p.write_text("id,t\n1,2024-01-01T00:00:00Z\n2,yesterday\n")
    with pytest.raises(DataError, match=r"column 't' line 3 \(data row 2\) value 'yesterday' is not timestamp"):
        read_csv(p, CsvFormat(), types={"t": pa.timestamp("us", tz="UTC")})

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    p.write_text(CSV)
    monkeypatch.setattr(pacsv, "read_csv", denied)  # root reads any file: refuse the read itself
    with pytest.raises(DataError, match=r"bom.csv: cannot read it: Permission denied"):
        load_table_file(p, MAPPING)


def test_integers_past_2_to_the_53_in_numeric_columns(tmp_path):
    """An event time in nanoseconds raised pyarrow's ArrowInvalid (not exactly a float64); now
    it is the event-time error that says which unit is expected."""
    p = tmp_path / "ns.csv"
    p.write_text("uid,click,ts\n1,0,1700000000000000000\n2,1,1700000001000000000\n")
    mapping = {"event_time": "ts", "spec": {"labels": ["click"], "sparse": [{"name": "uid"}]}}
    with pytest.raises(DataError, match="past the year 5000 in seconds"):
        load_table_file(p, mapping)
    p.write_text("uid,click,big\n1,0,9223372036854775807\n2,1,3\n")
    mapping = {"spec": {"labels": ["click"], "sparse": [{"name": "uid"}], "dense": [{"name": "big"}]}}
    assert load_table_file(p, mapping).encode().dense[0, 0] == pytest.approx(9.223372e18)


def test_a_label_column_is_read_as_nothing_else():
    """The label as a feature (leakage) or as the time that splits train from test was accepted."""
    from freshrec.errors import ConfigError

    label = MAPPING["spec"]["labels"][0]
    for bad in ({"columns": {"price": label}}, {"event_time": label}, {"weights": label}):
        with pytest.raises(ConfigError, match=rf"file column '{label}' is read as"):
            ColumnMapping.from_dict({**MAPPING, **bad})
    # other columns may serve several roles: the time or the weights as a feature too
    ColumnMapping.from_dict({**MAPPING, "columns": {**MAPPING["columns"], "price": "ts"}})
    ColumnMapping.from_dict({**MAPPING, "weights": "price"})


def test_a_repeated_header_is_refused_only_for_a_column_the_mapping_reads(tmp_path):
    header, *rows = CSV.splitlines()
    p = tmp_path / "d.csv"
    p.write_text("\n".join([header + ",extra", *(r + ",again" for r in rows)]) + "\n")  # 'extra' twice: unread
    assert len(load_table_file(p, MAPPING)) == 3


def test_bad_parquet(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"x.parquet: not a readable Parquet file"):
        load_table_file(p, MAPPING)
    pq.write_table(pa.table({"uid": ["a"], "sku": [1]}), p)
    with pytest.raises(DataError, match=r"x.parquet: missing column 'tags' \(for sparse slot 'tags'\)"):
        load_table_file(p, MAPPING)
    pq.write_table(pa.table({"uid": [1.5], "sku": [1], "tags": [[1]], "price": [1.0], "clicked": [1],
                             "ts": [1], "w": [1.0]}), p)  # fmt: skip
    with pytest.raises(DataError, match=r"x.parquet: sparse slot 'user': IDs must be integers or strings"):
        load_table_file(p, MAPPING)


def test_integer_ids_among_text_ids_are_a_warning(tmp_path, caplog):
    """One text ID makes a CSV column text: its "5" is hashed, and no longer the ID 5 of an
    all-integer file or of an event sending 5. Silent until now."""
    p = tmp_path / "mixed.csv"
    mapping = {"spec": {"labels": ["click"], "sparse": [{"name": "uid"}]}}
    p.write_text("uid,click\n5,0\n6,1\n")
    with caplog.at_level("WARNING", logger="freshrec.data.table_file"):
        load_table_file(p, mapping)
    assert not caplog.records
    p.write_text("uid,click\n5,0\n6,1\nguest,0\n")
    with caplog.at_level("WARNING", logger="freshrec.data.table_file"):
        load_table_file(p, mapping)
    assert "column 'uid' holds 2 integer IDs among text ones" in caplog.text


def test_a_declared_id_type_keeps_codes_as_written_and_silences_the_mixed_warning(tmp_path, caplog):
    """Inference reads "00123" as the integer 123 and types a column by its cells; a slot's
    id_type decides instead: text keeps the code and makes 5 and "5" one ID, int parses."""
    p = tmp_path / "codes.csv"
    p.write_text("sku,uid,click\n00123,5,0\n123,guest,1\n")
    spec = {"labels": ["click"], "sparse": [{"name": "sku", "id_type": "text"}, {"name": "uid", "id_type": "text"}]}
    with caplog.at_level("WARNING", logger="freshrec.data.table_file"):
        b = load_table_file(p, {"spec": spec}).encode()
    assert not caplog.records
    assert b.sparse["sku"].values.tolist() == hash_ids(["00123", "123"], 0).tolist()
    assert b.sparse["uid"].values.tolist() == hash_ids(["5", "guest"], 0).tolist()
    spec["sparse"] = [{"name": "sku", "id_type": "int"}, {"name": "uid"}]
    with pytest.raises(DataError, match=r"codes.csv: sparse slot 'sku': id_type is int"):
        p.write_text("sku,uid,click\n00123,5,0\nB-7,6,1\n")
        load_table_file(p, {"spec": spec})
    p.write_text("sku,uid,click\n00123,5,0\n7,6,1\n")
    assert load_table_file(p, {"spec": spec}).encode().sparse["sku"].values.tolist() == [123, 7]


def test_a_bad_value_after_blank_lines_names_its_line_in_the_file(tmp_path):
    """pyarrow skips empty lines without counting them, so the line of a bad value (loaded or
    streamed in blocks) came out one short for every blank line above it."""
    rows = [f"u{i},{i},{i},{i}.5,{i % 2},{i},1.0,e\n" + ("\n" if i % 10 == 0 else "") for i in range(300)]
    rows[250] = rows[250].replace("250.5", "cheap")  # data row 251, after 25 blank lines and the header
    p = tmp_path / "gaps.csv"
    p.write_text("uid,sku,tags,price,clicked,ts,w,extra\n" + "".join(rows))
    match = r"gaps.csv: column 'price' line 277 \(data row 251\) value 'cheap' is not double"
    with pytest.raises(DataError, match=match):
        load_table_file(p, MAPPING)
    with pytest.raises(DataError, match=match):
        list(stream_table_file(p, MAPPING, batch_size=64, block_size=1024))
    assert p.read_text().splitlines()[276].startswith("u250,250,250,cheap,")
    rows[100] = rows[100].replace(",e\n", ',"two\nlines"\n')  # a quoted line break is one more line too
    p.write_text("uid,sku,tags,price,clicked,ts,w,extra\n" + "".join(rows))
    with pytest.raises(DataError, match=r"column 'price' line 278 \(data row 251\)"):
        load_table_file(p, MAPPING)
