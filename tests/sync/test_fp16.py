"""The float16 serving PS: reads back exactly the float16 rounding of what was written (so the
error is float16's, never more), halves the row memory, and refuses what it cannot hold."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import InputError, StateError
from freshrec.ps import LocalPS, PSConfig
from freshrec.sync import Fp16PS, serving_table_config
from freshrec.sync.fp16 import pack_fp16, unpack_fp16
from freshrec.table import TableConfig

CFG = PSConfig(num_shards=2, threads=1)


def tables(*dims: int, default: float = 0.0) -> dict[str, TableConfig]:
    return {f"t{d}": serving_table_config(TableConfig(name=f"t{d}", dim=d, default_value=default)) for d in dims}


@pytest.mark.parametrize("dim", [1, 2, 5, 16])
def test_pack_unpack_is_the_float16_rounding(dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(0, 0.1, (1000, dim)).astype(np.float32)
    x[0] = 0.0
    x[1] = -0.0
    x[2] = 6e-8  # float16 subnormals
    x[3] = 65504.0  # float16's largest
    words = pack_fp16(x)
    assert words.shape == (1000, (dim + 1) // 2) and words.dtype == np.float32
    assert np.isfinite(words).all()  # the table's NaN/Inf check never trips on packed words
    np.testing.assert_array_equal(unpack_fp16(words, dim), x.astype(np.float16).astype(np.float32))


def test_serving_reads_exactly_the_rounding_and_error_is_within_float16_precision():
    rng = np.random.default_rng(0)
    ps16, ps32 = Fp16PS(tables(5, 16), CFG), LocalPS(tables(5, 16), CFG)
    for t, dim in (("t5", 5), ("t16", 16)):
        ids = rng.choice(10**12, 20_000, replace=False).astype(np.int64)
        emb = rng.normal(0, 0.05, (ids.size, dim)).astype(np.float32)
        ps16.assign(t, ids, emb)
        ps32.assign(t, ids, emb)
        got = ps16.pull(t, ids)
        np.testing.assert_array_equal(got, emb.astype(np.float16).astype(np.float32))
        err = np.abs(got - emb)
        bound = np.maximum(np.abs(emb) * 2.0**-11, 2.0**-25)  # half an ulp, normal or subnormal
        assert (err <= bound).all()
        print(f"dim {dim}: max abs error {err.max():.2e} (values ~N(0, 0.05))")
        exp = ps16.export(t)
        np.testing.assert_array_equal(exp.embeddings, ps16.pull(t, exp.ids))
    # the memory saving: a row's words drop from D + 3 to ceil(D / 2) + 3 (3 = metadata), the index
    # (~32 bytes a row) is unchanged: at dim 16 the whole table shrinks to ~0.7x, the rows to 0.58x
    s16, s32 = ps16.stats(), ps32.stats()
    for t, dim in (("t5", 5), ("t16", 16)):
        ratio = s16[t].bytes_total / s32[t].bytes_total
        print(f"dim {dim}: fp16 table {s16[t].bytes_total / 2**20:.2f} MiB vs fp32 "
              f"{s32[t].bytes_total / 2**20:.2f} MiB = {ratio:.2f}x")  # fmt: skip
    assert ps16.inner.shard_tables("t16")[0].width == 8 + 3 and ps32.shard_tables("t16")[0].width == 16 + 3
    assert s16["t16"].bytes_total / s32["t16"].bytes_total < 0.72
    assert s16["t5"].bytes_total < s32["t5"].bytes_total


def test_missing_ids_read_the_default_vector_and_removals_work():
    ps = Fp16PS(tables(3, default=0.25), CFG)
    ps.assign("t3", np.array([1, 2]), np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(ps.pull("t3", np.array([1, 9])), [[0.5] * 3, [0.25] * 3])
    np.testing.assert_array_equal(np.sort(ps.remove("t3", np.array([1, 7]))), [1])
    np.testing.assert_array_equal(ps.pull("t3", np.array([1, 2])), [[0.25] * 3, [0.5] * 3])
    assert ps.tables["t3"].dim == 3 and ps.stats()["t3"].rows == 1


def test_what_float16_cannot_hold_or_do_is_refused():
    ps = Fp16PS(tables(4), CFG)
    with pytest.raises(InputError, match="float16 range"):
        ps.assign("t4", np.array([1]), np.array([[1.0, 7e4, 0, 0]], np.float32))
    with pytest.raises(InputError, match="float16 range"):
        ps.assign("t4", np.array([1]), np.array([[np.nan, 0, 0, 0]], np.float32))
    with pytest.raises(InputError, match=r"shape \(n, 4\)"):
        ps.assign("t4", np.array([1]), np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="unknown table"):
        ps.pull("nope", np.array([1]))
    with pytest.raises(StateError, match="inference-only"):
        ps.push("t4", np.array([1]), np.zeros((1, 4), np.float32), now=0)
    with pytest.raises(StateError, match="inference-only"):
        ps.pull("t4", np.array([1]), train=True, now=0)
    assert ps.stats()["t4"].rows == 0  # nothing was written
    ps.close()
    with pytest.raises(StateError, match="closed"):
        ps.pull("t4", np.array([1]))
