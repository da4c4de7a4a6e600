"""The trainer learns, skips non-finite steps without touching anything, scores before training
(progressive validation), pushes exactly the gradients autograd computes, and round-trips its
model directory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from freshrec._io import checksum_bytes
from freshrec.errors import CorruptionError, InputError, StateError
from freshrec.features import Batch, DenseFeature, FeatureSpec, Jagged, SparseSlot
from freshrec.models import DeepFMConfig, LRConfig
from freshrec.table import SGD, TableConfig
from freshrec.train import TrainConfig, Trainer

SPEC = FeatureSpec(
    sparse=[
        SparseSlot(name="user", table="ids"),
        SparseSlot(name="item", table="ids"),  # a table shared by two slots
        SparseSlot(name="tags", multi_valued=True, pooling="mean"),
    ],
    dense=[DenseFeature(name="x")],
    labels=["click"],
    tables=[TableConfig(name="ids", dim=4)],
    table_defaults={"dim": 4},
)


def synthetic(n: int, seed: int, t0: float = 0.0) -> Batch:
    """Clicks driven by the item (half the items are good) and the dense feature."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 50, n)
    item = rng.integers(1000, 1040, n)
    lengths = rng.integers(0, 4, n)
    tags = rng.integers(0, 10, lengths.sum())
    x = rng.normal(size=(n, 1)).astype(np.float32)
    logit = np.where(item % 2 == 0, 1.5, -1.5) + x[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
    return Batch(
        sparse={"user": Jagged.single(user), "item": Jagged.single(item), "tags": Jagged.from_lengths(tags, lengths)},
        dense=x, labels=y, weights=np.ones(n, np.float32), event_time=t0 + np.arange(n, dtype=np.float64),
    )  # fmt: skip


def test_learns_a_synthetic_problem_online():
    tr = Trainer(SPEC, DeepFMConfig(hidden=[16]), TrainConfig(dense_lr=0.01))
    for i in range(60):
        tr.step(synthetic(256, i, t0=i * 256.0), progressive=True)
    held_out = tr.evaluate([synthetic(4000, 999)])
    assert held_out["click/auc"] > 0.8
    assert tr.metrics.compute()["click/auc"] > 0.75  # progressive AUC over the window
    assert tr.counters.steps == 60 and tr.counters.examples == 60 * 256


def test_shared_table_is_pulled_once_with_both_slots_ids():
    tr = Trainer(SPEC, LRConfig())
    b = synthetic(64, 0)
    pulled = tr.sparse.pull(b, train=True, now=0)
    want = np.unique(np.concatenate([b.sparse["user"].values, b.sparse["item"].values]))
    np.testing.assert_array_equal(np.sort(pulled.ids["ids"]), want)  # each ID once
    assert set(pulled.rows) == {"ids", "tags"} and set(pulled.leaves) == {4}  # one leaf per width
    assert pulled.leaves[4].shape[0] == want.size + np.unique(b.sparse["tags"].values).size


def test_pushed_gradients_are_autograd_gradients():
    """Mean pooling over a multi-valued slot, duplicates within the batch: the pushed rows must
    equal a dense torch computation of the same loss."""
    spec = FeatureSpec(sparse=[SparseSlot(name="tags", multi_valued=True, pooling="mean")], labels=["y"],
                       table_defaults={"dim": 2, "optimizer": SGD(lr=1.0), "initializer": {"type": "uniform"}})  # fmt: skip
    tr = Trainer(spec, LRConfig(), TrainConfig(dense_optimizer="sgd", dense_lr=1e-9, init_bias_from_data=False))
    values, lengths = np.array([5, 5, 7, 7, 9, 5]), np.array([2, 3, 0, 1])
    batch = Batch({"tags": Jagged.from_lengths(values, lengths)}, np.zeros((4, 0), np.float32),
                  np.array([[1], [0], [1], [0]], np.float32), np.ones(4, np.float32), np.zeros(4))  # fmt: skip
    before = tr.ps.pull("tags", np.array([5, 7, 9]), train=True, now=0)
    table = torch.tensor(before, requires_grad=True)
    index = {5: 0, 7: 1, 9: 2}
    rows = [table[[index[v] for v in values[o : o + n]]].mean(0) if n else torch.zeros(2)
            for o, n in zip(np.r_[0, np.cumsum(lengths)[:-1]], lengths, strict=True)]  # fmt: skip
    logits = tr.model(dict(tags=torch.stack(rows)), torch.zeros(4, 0))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(batch.labels)).backward()
    tr.step(batch)
    after = tr.ps.pull("tags", np.array([5, 7, 9]))
    np.testing.assert_allclose(before - after, table.grad.numpy(), rtol=1e-5, atol=1e-7)  # SGD, lr 1


def test_progressive_predictions_come_before_the_update():
    tr = Trainer(SPEC, DeepFMConfig(hidden=[8]), TrainConfig(dense_lr=0.05))
    for i in range(5):
        tr.step(synthetic(128, i))
    b = synthetic(128, 77, t0=1e4)
    tr.ps.pull_many({"ids": np.concatenate([b.sparse["user"].values, b.sparse["item"].values]),
                     "tags": b.sparse["tags"].values}, train=True, now=1e4)  # fmt: skip
    before = tr.predict(b)
    res = tr.step(b, progressive=True)
    np.testing.assert_allclose(res.probs, before, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tr.predict(b), before)


def _ps_state(tr: Trainer) -> dict[str, dict[int, np.ndarray]]:
    out = {}
    for t in tr.ps.tables:
        exp = tr.ps.export(t)
        out[t] = {int(k): np.concatenate([e, s]) for k, e, s in zip(exp.ids, exp.embeddings, exp.state, strict=True)}
    return out


def test_nonfinite_input_skips_the_step_before_touching_the_ps():
    tr = Trainer(SPEC, DeepFMConfig(hidden=[8]))
    tr.step(synthetic(64, 0))
    dense_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    ps_before, stats_before = _ps_state(tr), tr.ps.stats()
    bad = synthetic(64, 1)  # new IDs, and one NaN feature
    bad.dense[3, 0] = np.nan
    res = tr.step(bad)
    assert res.skipped and tr.counters.skipped_nonfinite == 1 and tr.counters.steps == 1
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, dense_before[k])
    after = _ps_state(tr)
    assert after.keys() == ps_before.keys()
    for t in after:
        assert after[t].keys() == ps_before[t].keys()  # nothing admitted
        assert all(np.array_equal(after[t][k], v) for k, v in ps_before[t].items())
    assert tr.ps.stats() == stats_before


def test_nonfinite_loss_from_the_model_changes_no_parameter():
    tr = Trainer(SPEC, DeepFMConfig(hidden=[8]))
    tr.step(synthetic(64, 0))
    with torch.no_grad():
        tr.model.head.weight.fill_(float("inf"))  # a diverged model
    dense_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    ps_before = _ps_state(tr)
    res = tr.step(synthetic(64, 0))  # same IDs
    assert res.skipped and tr.counters.steps == 1
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, dense_before[k], equal_nan=True)
    after = _ps_state(tr)
    for t in after:
        assert all(np.array_equal(after[t][k], v) for k, v in ps_before[t].items())


def test_sparse_gradients_the_ps_would_refuse_skip_the_step_before_the_dense_one():
    """Finite but huge (a diverged dense layer): the PS refuses them; it used to do so after the
    dense optimizer had stepped, leaving the step half done and uncounted."""
    tr = Trainer(SPEC, DeepFMConfig(hidden=[8]), TrainConfig(dense_lr=0.01))
    tr.step(synthetic(256, 0), progressive=False)
    lin = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        lin.weight.mul_(1e19)
    dense_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    ps_before = _ps_state(tr)
    res = tr.step(synthetic(256, 1, t0=256.0), progressive=False)
    assert res.skipped and tr.counters.skipped_nonfinite == 1 and tr.counters.steps == 1
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, dense_before[k])
    after = _ps_state(tr)
    for t in after:
        assert all(np.array_equal(after[t][k], v) for k, v in ps_before[t].items())


def test_negative_sampling_correction_shifts_logits_by_log_r():
    plain = Trainer(SPEC, LRConfig(), TrainConfig(seed=3))
    sampled = Trainer(SPEC, LRConfig(), TrainConfig(seed=3, negative_sampling_rate=0.1))
    b = synthetic(32, 0)
    for tr in (plain, sampled):
        tr.ps.pull_many({"ids": np.arange(2000), "tags": np.arange(10)}, train=True, now=0)
    p, q = plain.predict(b), sampled.predict(b)
    logit = lambda x: np.log(x / (1 - x))  # noqa: E731
    np.testing.assert_allclose(logit(q) - logit(p), np.log(0.1), atol=1e-4)


def test_model_directory_round_trip_and_continued_training(tmp_path):
    a = Trainer(SPEC, DeepFMConfig(hidden=[8]), TrainConfig(dense_lr=0.01))
    for i in range(4):
        a.step(synthetic(64, i, t0=64.0 * i), progressive=True)
    a.save(tmp_path / "m")
    b = Trainer.load(tmp_path / "m")
    probe = synthetic(200, 123)
    np.testing.assert_array_equal(a.predict(probe), b.predict(probe))
    for tr in (a, b):  # identical continued training: optimizer state came back too
        tr.step(synthetic(64, 50, t0=1e3))
    np.testing.assert_allclose(a.predict(probe), b.predict(probe), rtol=1e-6, atol=1e-7)
    assert b.counters.steps == 5


def test_dropout_draws_continue_across_a_restore_and_are_the_trainers_own(tmp_path):
    """With dropout, a trainer restored from its directory trained on bit-identical to one that
    never stopped (the dropout generator's state is saved with it); another trainer stepping at
    the same time in another thread, or the caller drawing from torch's global generator, changes
    nothing."""
    model = DeepFMConfig(hidden=[16, 16], dropout=0.3)
    a = Trainer(SPEC, model, TrainConfig(dense_lr=0.01))
    for i in range(3):
        a.step(synthetic(64, i, t0=64.0 * i))
    a.save(tmp_path / "m")
    b = Trainer.load(tmp_path / "m")
    other = Trainer(SPEC, model, TrainConfig(seed=7))

    def steps(tr: Trainer, seed0: int) -> None:
        for i in range(3, 9):
            tr.step(synthetic(64, seed0 + i, t0=64.0 * i))
            torch.rand(10)  # the caller's draws, in between

    threads = [threading.Thread(target=steps, args=(tr, s)) for tr, s in ((a, 0), (other, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steps(b, 0)
    probe = synthetic(200, 123)
    np.testing.assert_array_equal(a.predict(probe), b.predict(probe))
    state = torch.get_rng_state()
    Trainer(SPEC, model)  # building a trainer seeds its weights without reseeding the caller's generator
    assert torch.equal(torch.get_rng_state(), state)
    # a generator state that is no such state (its file intact by its checksum) is refused on load
    blob = st_save({"state": torch.zeros(3, dtype=torch.uint8)})
    (tmp_path / "m" / "rng.safetensors").write_bytes(blob)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["files"]["rng.safetensors"] = {"bytes": len(blob), "xxh3_128": checksum_bytes(blob)}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptionError, match="dropout generator's state is unusable"):
        Trainer.load(tmp_path / "m")


def test_progressive_metrics_survive_a_restart(tmp_path):
    """A trainer restarted from its checkpoint reports the same progressive metrics before it
    sees another example (it reported none: a dashboard went blank at every restart)."""
    a = Trainer(SPEC, LRConfig(), TrainConfig(metrics_window=150))
    for i in range(4):  # 256 examples through a window of 150: the ring has wrapped
        a.step(synthetic(64, i, t0=64.0 * i), progressive=True)
    a.save(tmp_path / "m")
    b = Trainer.load(tmp_path / "m")
    assert b.metrics.compute() == pytest.approx(a.metrics.compute(), rel=1e-12) and b.metrics.seen == 256
    for tr in (a, b):
        tr.step(synthetic(64, 9, t0=1e3), progressive=True)
    assert b.metrics.compute() == pytest.approx(a.metrics.compute(), rel=1e-12)


def test_corrupted_model_directory_is_refused(tmp_path):
    a = Trainer(SPEC, LRConfig())
    a.step(synthetic(32, 0))
    a.save(tmp_path / "m")
    f = tmp_path / "m" / "dense.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CorruptionError):
        Trainer.load(tmp_path / "m")
    with pytest.raises(CorruptionError, match="not a directory"):  # it raised a raw NotADirectoryError
        Trainer.load(f)


def test_save_replaces_only_a_model_directory(tmp_path):
    """A save swaps the whole folder in, so it refuses any path that is not an earlier model
    directory (a mistyped --out once replaced a folder of notes), and leaves that path as it was."""
    a = Trainer(SPEC, LRConfig())
    a.step(synthetic(32, 0))
    a.save(tmp_path / "m")
    a.save(tmp_path / "m")  # an earlier model directory: replaced
    (tmp_path / "empty").mkdir()
    a.save(tmp_path / "empty")  # an empty folder: taken
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("important")
    (tmp_path / "file.txt").write_text("also important")
    ps_snap = tmp_path / "ps-snap"
    a.ps.save(ps_snap)  # another format of ours
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "manifest.json").write_text("my own notes, not JSON")
    for target, match in ((notes, "no manifest.json"), (tmp_path / "file.txt", "is not a model directory"),
                          (ps_snap, "freshrec.ps directory"), (torn, "unreadable"),
                          (tmp_path / "file.txt" / "m", "file.txt is not a writable directory")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            a.save(target)
    assert (notes / "todo.txt").read_text() == "important" and (tmp_path / "file.txt").read_text() == "also important"
    assert (torn / "manifest.json").read_text() == "my own notes, not JSON"
    assert Trainer.load(tmp_path / "empty").counters.steps == 1
    (tmp_path / "link").symlink_to(tmp_path / "m")  # a link to a model directory: the link is replaced
    a.save(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and Trainer.load(tmp_path / "m").counters.steps == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["empty", "file.txt", "link", "m", "notes", "ps-snap", "torn"]  # no temp or old copy left
    with pytest.raises(InputError, match="not a parameter-server snapshot"):
        a.ps.save(notes / "todo.txt")
    a.close()


def test_a_save_after_a_crashed_one_removes_the_copy_it_set_aside(tmp_path, monkeypatch):
    """A save killed between its two renames leaves the previous version aside (.m.old-*).
    Nothing removed it: a later good save kept it, and once m was deleted, loading m quietly
    took that pre-crash model. Another name's copies stay (.m.old-v1.old-* is m.old-v1's)."""
    a = Trainer(SPEC, LRConfig())
    a.step(synthetic(32, 0))
    a.save(tmp_path / "m")
    a.save(tmp_path / "m.old-v1")
    os_rename = os.rename

    def dies_after_setting_m_aside(src, dst):
        os_rename(src, dst)
        if src == tmp_path / "m":  # as a kill would, after m went aside and before the new m is in
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", dies_after_setting_m_aside)
    a.step(synthetic(32, 1))
    with pytest.raises(KeyboardInterrupt):
        a.save(tmp_path / "m")
    monkeypatch.undo()
    assert not (tmp_path / "m").exists()
    assert Trainer.load(tmp_path / "m").counters.steps == 1  # m is missing: the copy set aside is found
    # a crashed save of m.old-v1 too: its set-aside copy is .m.old-v1.old-<id>, which saving m must keep
    shutil.copytree(tmp_path / "m.old-v1", tmp_path / ".m.old-v1.old-0123abcd")
    a.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.old-v1.old-0123abcd", "m", "m.old-v1"]
    shutil.rmtree(tmp_path / "m")
    with pytest.raises(CorruptionError, match=r"no manifest\.json"):
        Trainer.load(tmp_path / "m")
    shutil.rmtree(tmp_path / "m.old-v1")
    assert Trainer.load(tmp_path / "m.old-v1").counters.steps == 1  # its own copy is still found
    a.close()


def test_a_save_is_refused_up_front_where_it_could_only_fail_at_its_end(tmp_path, monkeypatch):
    a = Trainer(SPEC, LRConfig())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="name a folder"):
        a.save(".")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "m").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("ro") else real_access(p, mode))
    with pytest.raises(InputError, match="ro is not a writable directory"):  # root writes anywhere: refuse by access
        a.save(tmp_path / "ro" / "m")
    a.close()


def test_a_model_directory_manifest_missing_a_field_is_corrupt(tmp_path):
    a = Trainer(SPEC, LRConfig())
    a.save(tmp_path / "m")
    a.close()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    for field in ("files", "counters", "logit_offset"):
        broken = {k: v for k, v in manifest.items() if k != field}
        (tmp_path / "m" / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(CorruptionError, match=f"manifest.json is malformed \\(KeyError: '{field}'\\)"):
            Trainer.load(tmp_path / "m")


def test_a_batch_of_another_spec_is_refused_before_the_ps_sees_it():
    """A batch with an extra dense column used to admit its IDs, then crash in the model."""
    tr = Trainer(SPEC, LRConfig())
    good = synthetic(32, 0)
    extra_dense = dataclasses.replace(good, dense=np.ones((32, 2), np.float32))
    no_tags = dataclasses.replace(good, sparse={k: v for k, v in good.sparse.items() if k != "tags"})
    bad_labels = dataclasses.replace(good, labels=np.full((32, 1), 5.0, np.float32))
    user = good.sparse["user"]  # single-valued: one row with two IDs, one with none, would be pooled
    two_users = dataclasses.replace(good, sparse={**good.sparse, "user": Jagged.from_lengths(
        user.values, np.r_[2, 0, np.ones(30, np.int64)])})  # fmt: skip
    for batch, match in ((extra_dense, "2 dense columns"), (no_tags, r"lacks slots \['tags'\]"),
                         ({"user": [1]}, "expected a Batch"), (bad_labels, r"labels must be in \[0, 1\]"),
                         (two_users, r"single-valued slots \['user'\] hold other than one ID")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            tr.step(batch)
    with pytest.raises(InputError, match="2 dense columns"):
        tr.predict(extra_dense)
    assert all(st.rows == 0 and st.lookups == 0 for st in tr.ps.stats().values()) and tr.counters.steps == 0
    empty = synthetic(0, 0)
    assert tr.step(empty).probs.shape == (0, 1) and tr.counters.steps == 0  # a no-op, not an error
    tr.step(good)
    assert tr.counters.steps == 1
    tr.close()


def test_closed_trainer_refuses_work():
    tr = Trainer(SPEC, LRConfig())
    tr.close()
    with pytest.raises(StateError, match="cannot step: the trainer is closed"):
        tr.step(synthetic(8, 0))


def test_the_frequency_filter_counts_occurrences_not_distinct_ids_per_batch():
    """The bridge deduplicates a batch's IDs before pulling; admission must still see every
    occurrence: an ID seen twice in one batch is admitted at min_count=2."""
    spec = FeatureSpec(sparse=[SparseSlot(name="item")], labels=["y"],
                       table_defaults={"dim": 2, "admission": {"min_count": 2}})  # fmt: skip
    tr = Trainer(spec, LRConfig())
    batch = Batch({"item": Jagged.single(np.array([7, 7, 8]))}, np.zeros((3, 0), np.float32),
                  np.array([[1], [0], [1]], np.float32), np.ones(3, np.float32), np.zeros(3))  # fmt: skip
    tr.step(batch)
    st = tr.ps.stats()["item"]
    assert 7 in set(tr.ps.export("item").ids.tolist()) and st.rows == 1  # 7 twice: admitted; 8 once: not
    assert st.filtered == 1 and tr.ps.export("item", [7]).counts.tolist() == [2]


@pytest.mark.parametrize("model", [LRConfig(), DeepFMConfig(hidden=[8])], ids=lambda m: m.type)
def test_the_first_step_starts_the_model_at_the_base_rate(model):
    """A fresh model predicts ~0.5; the first batch's label rate becomes its output bias, so the
    first progressive predictions are calibrated (with the negative-sampling correction on top)."""
    b = synthetic(512, 0)
    b.labels[:] = (np.arange(512) % 50 == 0)[:, None]  # a 2% rate
    tr = Trainer(SPEC, model, TrainConfig(negative_sampling_rate=0.5))
    res = tr.step(b, progressive=True)
    sampled = 0.02
    want = sampled * 0.5 / (sampled * 0.5 + (1 - sampled))  # the true rate behind a 1:2 sample
    assert abs(float(res.probs.mean()) - want) < 0.005, res.probs.mean()
    cold = Trainer(SPEC, model, TrainConfig(init_bias_from_data=False)).step(b).probs.mean()
    assert abs(float(cold) - want) > 0.1  # without it, the first predictions are far off


def test_the_base_rate_waits_for_a_batch_with_negatives(tmp_path):
    """A stream joined at first action starts with clicks only; the bias must not be taken from
    those (it would start the model near p = 1), but from the first batch that holds negatives.
    A saved and reloaded model keeps its bias."""
    from freshrec.train.model_dir import load_model_dir

    clicks, mixed = synthetic(256, 0), synthetic(512, 1)
    clicks.labels[:] = 1.0
    mixed.labels[:] = (np.arange(512) % 50 == 0)[:, None]  # 2%
    tr = Trainer(SPEC, LRConfig(), TrainConfig(dense_lr=1e-9))
    tr.step(clicks)
    assert tr.bias_pending
    tr.save(tmp_path / "early")
    assert load_model_dir(tmp_path / "early").bias_pending  # still waiting after a restore
    res = tr.step(mixed)
    assert not tr.bias_pending and abs(float(res.probs.mean()) - 0.02) < 0.005, res.probs.mean()
    tr.step(clicks)  # set once: later batches only train it
    tr.save(tmp_path / "late")
    assert not load_model_dir(tmp_path / "late").bias_pending


def test_weighted_loss_counts_an_example_of_weight_k_as_k_copies():
    """With weighted_loss, a batch whose example i has integer weight k_i trains exactly like the
    batch holding k_i copies of it (loss, base rate, dense and sparse updates); without it the
    weights change nothing but the metrics."""
    b = synthetic(64, 3)
    k = np.random.default_rng(0).integers(1, 4, 64)
    weighted = Batch(b.sparse, b.dense, b.labels, k.astype(np.float32), b.event_time)
    copies = b.take(np.repeat(np.arange(64), k))
    cfg = TrainConfig(dense_optimizer="sgd", dense_lr=0.1, weighted_loss=True, seed=1)
    a, c = Trainer(SPEC, DeepFMConfig(hidden=[8]), cfg), Trainer(SPEC, DeepFMConfig(hidden=[8]), cfg)
    la, lc = a.step(weighted).loss, c.step(copies).loss
    assert abs(la - lc) < 1e-5
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        np.testing.assert_allclose(pa.detach().numpy(), pc.detach().numpy(), atol=1e-5)
    ids = np.unique(b.sparse["item"].values)
    np.testing.assert_allclose(a.ps.export("ids", ids).embeddings, c.ps.export("ids", ids).embeddings, atol=1e-5)
    plain = Trainer(SPEC, DeepFMConfig(hidden=[8]), cfg.model_copy(update={"weighted_loss": False}))
    assert abs(plain.step(weighted).loss - la) > 1e-4  # the weights did change the loss above


def test_a_metrics_window_that_does_not_fit_starts_empty_and_keeps_the_weights(tmp_path, caplog):
    a = Trainer(SPEC, LRConfig())
    a.step(synthetic(64, 0), progressive=True)
    a.save(tmp_path / "m")
    f = tmp_path / "m" / "metrics.safetensors"  # a window for 2 tasks where the model has 1
    blob = st_save({"probs": torch.zeros(5, 2), "labels": torch.zeros(5, 2), "weights": torch.ones(5)})
    f.write_bytes(blob)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["files"]["metrics.safetensors"] = {"bytes": len(blob), "xxh3_128": checksum_bytes(blob)}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    b = Trainer.load(tmp_path / "m")
    assert b.metrics._filled == 0 and "progressive metrics start empty" in caplog.text
    probe = synthetic(50, 7)
    np.testing.assert_array_equal(a.predict(probe), b.predict(probe))
