"""The screen encoder: an open_clip vision tower built from a JSON config in `perception/configs/`.

A config is an open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`; the text part is there
only so that `open_clip.add_model_config` registers the file, and is never built) plus two keys
that only this factory reads:
- `preprocess_cfg`: `{"mean": [...], "std": [...]}` for `preprocess`;
- `conv_stem` (optional): channel counts of stride-2 3x3 convolutions that replace the tower's
  patchify convolution (`visual.conv1`), e.g. `[24, 48, 96]` for patch 16 (4 convs: 3 listed + one
  to the tower width). Neighbouring patches then overlap in what they see, which a 16 px grid
  slicing 11 px words needs (NOTES.md).
Because of these two keys, open_clip's own `create_model` does not accept Squirrel's configs.

Random init by default (nothing is downloaded, ever); `pretrained` is a local file: an open_clip
checkpoint (keys `visual.*`, optionally inside `state_dict` and with a `module.` prefix), a bare
vision-tower state dict, or a safetensors file written by `save_encoder`. The encoder trains with
the agent: `requires_grad` is on unless `freeze=True`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import open_clip
import torch
from open_clip.factory import load_state_dict
from open_clip.model import _build_vision_tower
from torch import nn

from perception.preprocess import MEAN, STD, preprocess
from squirrel.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_ENCODER = "squirrel-vit-t16"
open_clip.add_model_config(CONFIG_DIR)


def list_encoders() -> list[str]:
    """Squirrel's own encoder configs (any open_clip ViT config name also works)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _conv_stem(channels: list[int], width: int, patch: int) -> nn.Sequential:
    """Stride-2 3x3 convs (GELU between) from RGB to `width`, total stride = patch.

    The last conv is padded on the bottom/right only, so token i's receptive field is centred on
    its patch: [patch*i - patch/2 + 1, patch*i + 3*patch/2 - 1] (patch 16: its patch plus 7-8 px
    of each neighbour), and the token grid is the same as the plain patchify's.
    """
    if 2 ** (len(channels) + 1) != patch:
        raise UserError(f"conv_stem needs log2(patch_size) - 1 = {int(math.log2(patch)) - 1} channel counts, got {channels}")
    layers, c = [], 3
    for o in channels:
        layers += [nn.Conv2d(c, o, 3, stride=2, padding=1), nn.GELU()]
        c = o
    return nn.Sequential(*layers, nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c, width, 3, stride=2))


class ScreenEncoder(nn.Module):
    """Preprocessed frames (B,3,H,W) -> (patch tokens (B,N,dim), pooled (B,pooled_dim))."""

    def __init__(self, name: str, config: dict):
        super().__init__()
        vc = dict(config["vision_cfg"], output_tokens=True)
        self.visual = _build_vision_tower(config["embed_dim"], vc)
        self.name, self.config = name, config
        self.image_size = tuple(self.visual.image_size)  # (H, W)
        self.patch_size = int(self.visual.patch_size[0])
        self.grid = tuple(self.visual.grid_size)  # (gh, gw); token n is patch (n // gw, n % gw)
        self.dim = int(vc["width"])
        self.pooled_dim = int(config["embed_dim"])  # == dim in Squirrel's configs
        if config.get("conv_stem"):
            if any(s % self.patch_size for s in self.image_size):
                raise UserError(f"encoder {name}: a conv_stem needs image_size divisible by patch_size")
            self.visual.conv1 = _conv_stem(list(config["conv_stem"]), self.dim, self.patch_size)
        pp = config.get("preprocess_cfg", {})
        self.mean, self.std = tuple(pp.get("mean", MEAN)), tuple(pp.get("std", STD))
        self.extras: dict[str, torch.Tensor] = {}  # non-encoder weights that came with a pretrained file

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.visual(x)  # (B,pooled_dim), (B,N,dim)
        return tokens, pooled

    def preprocess(self, frames, resize: bool = False) -> torch.Tensor:
        """uint8 frames (H,W,3) or (B,H,W,3) -> this encoder's input (B,3,H,W)."""
        return preprocess(frames, self.image_size, self.mean, self.std, resize=resize)


def prior_dir() -> Path:
    """Where `squirrel pretrain` keeps the priors it makes: $SQUIRREL_CACHE/pretrain (default ~/.cache/squirrel)."""
    return Path(os.environ.get("SQUIRREL_CACHE") or "~/.cache/squirrel").expanduser() / "pretrain"


def find_prior(name: str) -> str:
    """The newest prior `squirrel pretrain` made for encoder `name` (what pretrained="auto" loads)."""
    stem = Path(name).stem if name.endswith(".json") else name
    found = sorted(prior_dir().glob(f"{stem}-*.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no pretrained prior for encoder {stem} in {prior_dir()}; run `squirrel pretrain --encoder {name}` first")
    return str(found[-1])


def encoder_config(name: str | None = None) -> dict:
    """The config dict of encoder `name` (a config name or a .json path; default DEFAULT_ENCODER)."""
    name = name or DEFAULT_ENCODER
    if name.endswith(".json") and os.path.isfile(name):
        config = json.loads(Path(name).read_text())
    else:
        config = open_clip.get_model_config(name)
    if config is None:
        raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(list_encoders())} or an open_clip ViT config")
    return config


def create_encoder(name: str | None = None, pretrained: str | None = None, freeze: bool = False) -> ScreenEncoder:
    """Build encoder `name` (a config name or a .json path; default DEFAULT_ENCODER). `pretrained`: a local
    weights file, or "auto" for the newest prior `squirrel pretrain` made for this encoder."""
    name = name or DEFAULT_ENCODER
    config = encoder_config(name)
    vc = config.get("vision_cfg", {})
    if vc.get("timm_model_name") or isinstance(vc.get("layers"), (list, tuple)):
        raise UserError(f"encoder {name!r} is not a ViT (patch tokens are needed); choose one of {', '.join(list_encoders())}")
    encoder = ScreenEncoder(name, config)
    if pretrained:
        _load_weights(encoder, find_prior(name) if pretrained == "auto" else pretrained)
    return encoder.requires_grad_(not freeze)


def _load_weights(encoder: ScreenEncoder, path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights {path} not found; give a local open_clip checkpoint or .safetensors file")
    try:
        sd = load_state_dict(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read {path} as an open_clip checkpoint or safetensors file ({type(e).__name__}: {e})") from None
    # a prior from `squirrel pretrain` also holds the policy's reading projection (`reading.*`): kept aside for it
    encoder.extras = {k[len("reading."):]: v for k, v in sd.items() if k.startswith("reading.")}
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    own = encoder.visual.state_dict()
    where = f"{path} does not match encoder {encoder.name}{_saved_from(path)}"
    for k, v in own.items():
        if k not in sd:
            raise UserError(f"{where}: it has no weights for {k}")
        if not isinstance(sd[k], torch.Tensor) or sd[k].shape != v.shape:
            got = tuple(sd[k].shape) if isinstance(sd[k], torch.Tensor) else type(sd[k]).__name__
            raise UserError(f"{where}: {k} is {got} in the file, {tuple(v.shape)} in the encoder")
    extra = sorted(set(sd) - set(own))
    if extra:
        raise UserError(f"{where}: it has weights the encoder lacks, first {extra[0]}")
    encoder.visual.load_state_dict(sd)


def _saved_from(path: str) -> str:
    """' (it holds encoder NAME)' for files written by save_encoder, else ''."""
    try:
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            name = (f.metadata() or {}).get("encoder")
    except Exception:  # noqa: BLE001 - not a safetensors file: no hint
        return ""
    return f" (it holds encoder {name})" if name else ""


def save_encoder(encoder: ScreenEncoder, path: str) -> None:
    """Write the encoder's weights (keys `visual.*`) and config as safetensors, atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"encoder": encoder.name, "config": json.dumps(encoder.config)}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
