"""The model directory: everything needed to serve a model or to continue training it.

::

    <dir>/
      manifest.json        format + version, feature spec, model / train / PS configs, tasks,
                           logit offset (log of the negative sampling rate), counters, metrics,
                           anything the caller adds (e.g. log offsets), checksums of the files
      dense.safetensors    the model's state_dict
      optim.safetensors    the dense optimizer's tensors; its scalars are in optim.json
      optim.json
      metrics.safetensors  the progressive-validation window (predictions, labels, weights), so a
                           restarted trainer reports the same metrics before it sees new examples
      rng.safetensors      the trainer's dropout generator state, so a restored trainer draws the
                           same dropout masks an uninterrupted one would
      ps/                  the parameter-server snapshot (freshrec.ps.local format)

Written under a temporary name and swapped in whole; every file is checksummed and verified on
load, so a torn or corrupted directory raises CorruptionError and is never half-loaded.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import TypeAdapter
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from freshrec._io import (
    check_replaceable,
    checksum_bytes,
    json_safe,
    malformed_manifest,
    recover_dir,
    replace_dir,
    temp_dir_beside,
    write_durable,
)
from freshrec._io import read_manifest as _read_manifest
from freshrec.errors import ConfigError, CorruptionError
from freshrec.features import FeatureSpec
from freshrec.models import ModelConfig
from freshrec.ps import PSConfig, load_ps
from freshrec.train.config import TrainConfig

if TYPE_CHECKING:
    from freshrec.train.trainer import Trainer

__all__ = ["load_model_dir", "read_manifest", "save_model_dir"]

log = logging.getLogger(__name__)

FORMAT = "freshrec.model"
FORMAT_VERSION = 1
_MODEL_CONFIG = TypeAdapter(ModelConfig)


def _optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, state in sd["state"].items():
        scalars["state"][str(pid)] = {}
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars["state"][str(pid)][k] = v
    return tensors, scalars


def _optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(vals) for pid, vals in scalars["state"].items()}
    for name, t in tensors.items():
        pid, _, key = name.partition(".")
        state.setdefault(int(pid), {})[key] = t
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_model_dir(trainer: Trainer, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    check_replaceable(path, FORMAT, "model directory")
    with temp_dir_beside(path) as tmp:
        files = {
            "dense.safetensors": st_save({k: v.contiguous() for k, v in trainer.model.state_dict().items()}),
        }
        tensors, scalars = _optimizer_parts(trainer.optimizer)
        files["optim.safetensors"] = st_save(tensors)
        files["optim.json"] = json.dumps(scalars).encode()
        probs, labels, weights = trainer.metrics.window_arrays()
        files["metrics.safetensors"] = st_save({"probs": torch.from_numpy(probs), "labels": torch.from_numpy(labels),
                                                "weights": torch.from_numpy(weights)})  # fmt: skip
        files["rng.safetensors"] = st_save({"state": trainer.generator.get_state()})
        sums = {}
        for name, blob in files.items():
            write_durable(tmp / name, blob)
            sums[name] = {"bytes": len(blob), "xxh3_128": checksum_bytes(blob)}
        trainer.ps.save(tmp / "ps")
        c = trainer.counters
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": trainer.spec.model_dump(mode="json"),
            "model": _MODEL_CONFIG.dump_python(trainer.model_config, mode="json"),
            "train": trainer.config.model_dump(mode="json"),
            "ps": getattr(trainer.ps, "config", PSConfig()).model_dump(mode="json"),
            "tasks": trainer.tasks,
            "logit_offset": trainer.logit_offset,
            "bias_pending": trainer.bias_pending,
            "counters": {"steps": c.steps, "examples": c.examples, "skipped_nonfinite": c.skipped_nonfinite,
                         "last_event_time": c.last_event_time if c.last_event_time > float("-inf") else None,
                         "metrics_seen": trainer.metrics.seen},
            "metrics": trainer.metrics.compute(),
            "files": sums,
            "extra": extra or {},
        }  # fmt: skip
        # strict JSON: an undefined metric (AUC of a one-class window) is null, not a NaN token
        write_durable(tmp / "manifest.json", json.dumps(json_safe(manifest), indent=1, allow_nan=False).encode())
        replace_dir(tmp, path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    return _read_manifest(recover_dir(Path(path)), FORMAT, FORMAT_VERSION, "model directory")


def _verified(folder: Path, name: str, entry: dict[str, Any]) -> bytes:
    f = folder / name
    if not f.is_file():
        raise CorruptionError(f"{f} is missing")
    blob = f.read_bytes()
    if len(blob) != entry["bytes"] or checksum_bytes(blob) != entry["xxh3_128"]:
        raise CorruptionError(f"{f} is truncated or fails its checksum")
    return blob


def _restore_metrics(trainer: Trainer, blob: bytes, seen: int, folder: Path) -> None:
    """The progressive-metrics window: advisory, so a window that does not fit (another task
    list) starts empty with a warning instead of refusing weights that are fine."""
    try:
        w = st_load(blob)
        trainer.metrics.restore(w["probs"].numpy(), w["labels"].numpy(), w["weights"].numpy(), seen)
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        log.warning("%s: progressive metrics start empty (the saved window does not fit: %s)", folder, exc)


def _count(value: Any) -> int:
    """A manifest counter: an int >= 0 (not a bool, a float or a string that looks like one)."""
    if type(value) is not int or value < 0:
        raise ValueError(f"a counter must be an integer >= 0, got {value!r}")
    return value


def _number(value: Any) -> float:
    """A finite JSON number (not a bool, nor a string such as "nan")."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def load_model_dir(path: str | Path, *, ps_config: PSConfig | None = None) -> Trainer:
    from freshrec.train.trainer import Trainer

    folder = recover_dir(Path(path))
    manifest = read_manifest(folder)
    with malformed_manifest(folder):  # a field missing or of the wrong type: CorruptionError, before anything loads
        blobs = {name: _verified(folder, name, entry) for name, entry in manifest["files"].items()}
        c = manifest["counters"]
        last = c.get("last_event_time")
        counters = (_count(c["steps"]), _count(c["examples"]), _count(c["skipped_nonfinite"]),
                    None if last is None else _number(last), _count(c.get("metrics_seen", 0)))  # fmt: skip
        logit_offset = _number(manifest["logit_offset"])
        bias_pending = manifest.get("bias_pending")
        configs = manifest["spec"], manifest["model"], manifest["train"]
    try:
        spec = FeatureSpec.from_dict(configs[0], source=f"{folder}/manifest.json")
        model_config = _MODEL_CONFIG.validate_python(configs[1])
        train_config = TrainConfig.from_dict(configs[2], source=f"{folder}/manifest.json")
    except (ConfigError, ValueError) as exc:
        raise CorruptionError(f"{folder}/manifest.json holds an invalid config: {exc}") from exc
    ps = load_ps(folder / "ps", ps_config)
    try:
        trainer = Trainer(spec, model_config, train_config, ps=ps)
        try:
            trainer.model.load_state_dict(st_load(blobs["dense.safetensors"]))
            state = _optimizer_state(st_load(blobs["optim.safetensors"]), json.loads(blobs["optim.json"]))
            trainer.optimizer.load_state_dict(state)
        except (SafetensorError, RuntimeError, KeyError, ValueError) as exc:
            raise CorruptionError(f"{folder}: dense weights do not fit the model: {exc}") from exc
    except BaseException:
        ps.close()  # its shards and thread pool: nothing half-loaded stays alive
        raise
    if "rng.safetensors" in blobs:  # older model dirs lack it: dropout draws restart from the seed
        try:
            trainer.generator.set_state(st_load(blobs["rng.safetensors"])["state"])
        except (SafetensorError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            trainer.close()
            raise CorruptionError(f"{folder}: the dropout generator's state is unusable: {exc}") from exc
    steps, examples, skipped, last_event_time, metrics_seen = counters
    if "metrics.safetensors" in blobs:  # older model dirs lack it: progressive metrics start empty
        _restore_metrics(trainer, blobs["metrics.safetensors"], metrics_seen, folder)
    trainer.counters.steps = steps
    trainer.counters.examples = examples
    trainer.counters.skipped_nonfinite = skipped
    if last_event_time is not None:
        trainer.counters.last_event_time = last_event_time
    trainer.logit_offset = logit_offset
    # older model dirs lack the flag: a model that has trained keeps its bias
    trainer.bias_pending = bool(trainer.bias_pending and steps == 0 if bias_pending is None else bias_pending)
    return trainer
