"""uint8 screen frames -> the encoder's normalised float input, batched, with no per-frame Python.

Native resolution by default: pixels are copied 1:1 into the top-left corner of the input, rows and
columns beyond the input are cropped (a 210-row task area loses its bottom 2 rows at the default
208x160 input) and missing ones are padded with the mean colour (0 after normalisation). So a
frame pixel (x, y) is input pixel (x, y), and patch (x // patch, y // patch). `resize=True`
resamples the whole frame to the input size instead (bilinear, antialiased).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# open_clip's default normalisation (OPENAI_DATASET_MEAN/STD); configs may set their own.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(
    frames: np.ndarray,
    image_size: tuple[int, int],
    mean: tuple[float, float, float] = MEAN,
    std: tuple[float, float, float] = STD,
    resize: bool = False,
) -> torch.Tensor:
    """frames (H,W,3) or (B,H,W,3) uint8 RGB -> float32 (B,3,*image_size), (x/255 - mean) / std."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames shaped (H,W,3) or (B,H,W,3), got {frames.dtype} {frames.shape}")
    if not frames.flags.writeable or min(frames.strides) < 0:  # torch.from_numpy refuses/warns on these
        frames = np.array(frames)
    x = torch.from_numpy(frames)
    x = x[None] if x.ndim == 3 else x  # (B,h,w,3)
    H, W = image_size
    # (x/255 - mean)/std as one multiply-add: x * scale + bias
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    src = x.permute(0, 3, 1, 2)  # (B,3,h,w) uint8 view, no copy
    if resize and tuple(src.shape[2:]) != (H, W):
        out = F.interpolate(src.float(), size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        return out.mul_(scale).add_(bias)
    h, w = min(src.shape[2], H), min(src.shape[3], W)
    out = torch.zeros(src.shape[0], 3, H, W)  # padding = mean colour
    dst = out[:, :, :h, :w]
    dst.copy_(src[:, :, :h, :w])  # uint8 -> float32 in the copy
    dst.mul_(scale).add_(bias)
    return out
