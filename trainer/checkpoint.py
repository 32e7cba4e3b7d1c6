"""Checkpoints (STYLE.md 10): module state dicts and optimiser state in one safetensors file, with
the config and counters in a JSON beside it that also holds the file's SHA-256. Both are written
atomically (temp file, fsync, rename); the last `keep` are kept. A file whose checksum does not
match is never loaded: the previous checkpoint is used, with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from squirrel.errors import UserError

NAME_RE = re.compile(r"^ckpt-(\d{10})\.safetensors$")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v.detach().contiguous()
            else:
                state_meta.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": state_meta}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        _, pid, k = name.split("/", 2)
        state.setdefault(int(pid), {})[k] = v
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, config: dict, counters: dict, keep: int = 3) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            key = f"{name}/{k}"
            if v.data_ptr() in seen and v.numel():  # a weight shared by two sub-modules: store it once
                aliases[key] = seen[v.data_ptr()]
                continue
            seen[v.data_ptr()] = key
            tensors[key] = v.detach().contiguous()
    optim_meta = None
    if optimizer is not None:
        ot, optim_meta = _flatten_optimizer(optimizer)
        tensors.update(ot)
    path = d / f"ckpt-{step:010d}.safetensors"
    _atomic_write(path, lambda f: f.write(_safetensors_bytes(tensors)))
    meta = {"step": step, "config": config, "counters": counters, "optimizer": optim_meta, "aliases": aliases,
            "sha256": _sha256(path)}
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
    for old in list_checkpoints(d)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    # a save cut short by a kill leaves its temp file; a home has one agent (agent/home.py), so any other is stale
    for stale in d.glob("ckpt-*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def list_checkpoints(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(p for p in d.glob("ckpt-*.safetensors") if NAME_RE.match(p.name)) if d.is_dir() else []


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of one checkpoint, after checking its checksum. Raises UserError when bad."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {path.name}: its metadata {meta_path.name} is missing or unreadable ({e})") from None
    if _sha256(path) != meta.get("sha256"):
        raise UserError(f"checkpoint {path.name} is corrupt (checksum mismatch)")
    try:
        return load_file(str(path)), meta
    except Exception as e:  # noqa: BLE001 - any unreadable file is corrupt
        raise UserError(f"checkpoint {path.name} is unreadable ({type(e).__name__})") from None


def load_latest(directory: str | Path, warn=print) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
    """The newest checkpoint that verifies; corrupt ones are skipped with a message. None if none."""
    for path in reversed(list_checkpoints(directory)):
        try:
            tensors, meta = load_checkpoint(path)
            return path, tensors, meta
        except UserError as e:
            warn(f"squirrel: {e}; using the previous checkpoint")
    return None


def restore(tensors: dict[str, torch.Tensor], meta: dict, modules: dict[str, torch.nn.Module],
            optimizer: torch.optim.Optimizer | None) -> None:
    tensors = dict(tensors, **{dup: tensors[orig] for dup, orig in meta.get("aliases", {}).items() if orig in tensors})
    for name, m in modules.items():
        prefix = f"{name}/"
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise UserError(f"checkpoint does not fit this agent's {name} (first mismatch: {(missing or unexpected)[0]}); "
                            "use the same --encoder and options as the run that wrote it, or a new --home")
    if optimizer is not None and meta.get("optimizer"):
        ot = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        optimizer.load_state_dict(_unflatten_optimizer(ot, meta["optimizer"]))
