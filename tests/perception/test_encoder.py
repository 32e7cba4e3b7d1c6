"""The screen encoder: shapes, training (never frozen by default), configs, local weights."""

import numpy as np
import open_clip
import pytest
import torch

from perception.encoder import DEFAULT_ENCODER, create_encoder, list_encoders, save_encoder
from squirrel.errors import UserError

LARGE = "squirrel-vit-s16-224"


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 210, 160, 3), dtype=np.uint8)


def test_default_is_native_task_area():
    enc = create_encoder()
    assert enc.name == DEFAULT_ENCODER
    assert enc.image_size == (208, 160) and enc.patch_size == 16 and enc.grid == (13, 10)
    tokens, pooled = enc(enc.preprocess(_frames(2)))
    assert tokens.shape == (2, 130, enc.dim) and pooled.shape == (2, enc.dim)
    assert tokens.dtype == pooled.dtype == torch.float32


@pytest.mark.parametrize("name", list_encoders())
def test_every_config_is_registered_builds_and_runs(name):
    assert name in open_clip.list_models()
    enc = create_encoder(name)
    tokens, pooled = enc(enc.preprocess(_frames(2)))
    gh, gw = enc.grid
    assert enc.image_size == (gh * enc.patch_size, gw * enc.patch_size)
    assert tokens.shape == (2, gh * gw, enc.dim) and pooled.shape == (2, enc.pooled_dim)
    assert enc.config["vision_cfg"]["width"] == enc.dim


def test_there_is_a_larger_224_config():
    assert LARGE in list_encoders()
    enc = create_encoder(LARGE)
    assert enc.image_size == (224, 224)
    assert sum(p.numel() for p in enc.parameters()) > 3 * sum(p.numel() for p in create_encoder().parameters())


def test_trainable_by_default_frozen_only_on_request():
    assert all(p.requires_grad for p in create_encoder().parameters())
    assert not any(p.requires_grad for p in create_encoder(freeze=True).parameters())


def test_one_optimisation_step_changes_every_encoder_weight():
    torch.manual_seed(0)
    enc = create_encoder()
    head = torch.nn.Linear(enc.dim, 1)  # e.g. a policy's click logits over patches
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-3)
    tokens, pooled = enc(enc.preprocess(_frames(4)))
    logits = head(tokens).squeeze(-1) + head(pooled)  # (B, N)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 5, 17, 129]))
    loss.backward()
    opt.step()
    after = enc.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


def test_conv_stem_patches_overlap_their_neighbours_plain_patches_do_not():
    x = create_encoder().preprocess(_frames(1))
    for px, near in ((16, (0, 0)), (31, (2, 2))):  # first / last pixel of patch (1, 1)
        x2 = x.clone()
        x2[..., px, px] += 5.0
        for name, overlaps in (("squirrel-vit-t16-conv", True), (DEFAULT_ENCODER, False)):
            conv1 = create_encoder(name).visual.conv1  # patch embedding, before any attention
            with torch.no_grad():
                d = (conv1(x2) - conv1(x)).abs().sum(1)[0]  # (gh, gw)
            assert d.shape == (13, 10)
            assert d[1, 1] > 0 and bool(d[near] > 0) == overlaps, (name, px)
            assert (d > 0).sum() == (4 if overlaps else 1), (name, px)


def test_safetensors_roundtrip(tmp_path):
    enc = create_encoder().eval()
    path = str(tmp_path / "enc.safetensors")
    save_encoder(enc, path)
    again = create_encoder(pretrained=path).eval()
    x = enc.preprocess(_frames(1))
    with torch.no_grad():
        assert torch.equal(enc(x)[0], again(x)[0])
    assert all(p.requires_grad for p in again.parameters())


def test_loads_an_open_clip_checkpoint(tmp_path):
    enc = create_encoder().eval()
    sd = {f"module.{k}": v for k, v in enc.state_dict().items()}
    sd["module.logit_scale"] = torch.tensor(4.6)  # the text side of a CLIP checkpoint is ignored
    sd["module.token_embedding.weight"] = torch.zeros(10, 192)
    path = str(tmp_path / "clip.pt")
    torch.save({"epoch": 3, "state_dict": sd}, path)
    again = create_encoder(pretrained=path).eval()
    x = enc.preprocess(_frames(1))
    with torch.no_grad():
        assert torch.equal(enc(x)[1], again(x)[1])


def test_bad_pretrained_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_encoder(pretrained=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        create_encoder(pretrained=str(junk))
    big = str(tmp_path / "big.safetensors")
    save_encoder(create_encoder(LARGE), big)
    with pytest.raises(UserError, match=r"\(it holds encoder squirrel-vit-s16-224\): class_embedding is \(384,\) in the file, \(192,\) in the encoder"):
        create_encoder(pretrained=big)
    stem = str(tmp_path / "stem.safetensors")
    save_encoder(create_encoder("squirrel-vit-t16-conv"), stem)
    with pytest.raises(UserError, match="no weights for conv1.weight"):
        create_encoder(pretrained=stem)


def test_unknown_or_non_vit_encoder_is_a_user_error():
    with pytest.raises(UserError, match="unknown encoder"):
        create_encoder("no-such-encoder")
    with pytest.raises(UserError, match="not a ViT"):
        create_encoder("RN50")
