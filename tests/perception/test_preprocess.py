"""uint8 frames -> normalised encoder input: shapes, dtype, values, native placement."""

import numpy as np
import pytest
import torch

from perception.encoder import create_encoder
from perception.preprocess import MEAN, STD, preprocess

SIZE = (208, 160)


def _norm(v, c):
    return (v / 255.0 - MEAN[c]) / STD[c]


def test_single_and_batched_shapes():
    one = preprocess(np.zeros((210, 160, 3), np.uint8), SIZE)
    assert one.shape == (1, 3, 208, 160) and one.dtype == torch.float32 and one.is_contiguous()
    many = preprocess(np.zeros((5, 210, 160, 3), np.uint8), SIZE)
    assert many.shape == (5, 3, 208, 160)


def test_values_are_normalised_per_channel():
    frame = np.zeros((210, 160, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 128, 0
    x = preprocess(frame, SIZE)
    for c, v in enumerate((255, 128, 0)):
        assert torch.allclose(x[0, c], torch.full(SIZE, _norm(v, c)), atol=1e-5)


def test_native_placement_crops_bottom_rows_and_keeps_coordinates():
    frame = np.zeros((210, 160, 3), np.uint8)
    frame[3, 7] = (255, 0, 0)  # pixel (x=7, y=3)
    frame[208:] = 255  # the 2 rows that do not fit
    x = preprocess(frame, SIZE)
    assert x[0, 0, 3, 7] == pytest.approx(_norm(255, 0), abs=1e-5)
    assert x[0, 1, 3, 7] == pytest.approx(_norm(0, 1), abs=1e-5)
    assert torch.allclose(x[0, :, 207], preprocess(np.zeros((1, 160, 3), np.uint8), (1, 160))[0, :, 0])


def test_small_frames_are_padded_with_the_mean_colour():
    x = preprocess(np.full((100, 80, 3), 255, np.uint8), (224, 224))
    assert x.shape == (1, 3, 224, 224)
    assert (x[0, :, 100:] == 0).all() and (x[0, :, :, 80:] == 0).all()
    assert torch.allclose(x[0, 0, :100, :80], torch.full((100, 80), _norm(255, 0)))


def test_resize_resamples_the_whole_frame():
    frames = np.full((2, 210, 160, 3), 200, np.uint8)
    x = preprocess(frames, (128, 128), resize=True)
    assert x.shape == (2, 3, 128, 128)
    assert torch.allclose(x[:, 2], torch.full((2, 128, 128), _norm(200, 2)), atol=1e-4)


def test_batch_equals_frames_one_by_one():
    frames = np.random.default_rng(1).integers(0, 256, (4, 210, 160, 3), dtype=np.uint8)
    batch = preprocess(frames, SIZE)
    assert torch.equal(batch, torch.cat([preprocess(f, SIZE) for f in frames]))


def test_read_only_and_non_contiguous_frames():
    raw = np.random.default_rng(2).integers(0, 256, (210, 160, 4), dtype=np.uint8)
    rgb = raw[:, :, 2::-1]  # a BGRA view, as a capture might hand over
    ro = np.frombuffer(np.ascontiguousarray(rgb).tobytes(), np.uint8).reshape(210, 160, 3)
    assert torch.equal(preprocess(rgb, SIZE), preprocess(ro, SIZE))


def test_rejects_wrong_dtype_or_shape():
    with pytest.raises(ValueError):
        preprocess(np.zeros((210, 160, 3), np.float32), SIZE)
    with pytest.raises(ValueError):
        preprocess(np.zeros((210, 160), np.uint8), SIZE)


def test_encoder_preprocess_uses_its_config():
    enc = create_encoder()
    frame = np.full((210, 160, 3), 90, np.uint8)
    assert enc.mean == tuple(enc.config["preprocess_cfg"]["mean"])
    assert torch.equal(enc.preprocess(frame), preprocess(frame, enc.image_size, enc.mean, enc.std))
