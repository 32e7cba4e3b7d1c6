import torch
from torch import nn

from trainer.checkpoint import list_checkpoints, load_latest, restore, save_checkpoint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.alias = self.body[0]  # a shared sub-module: stored once, restored under both names

    def forward(self, x):
        return self.body(x)


def make():
    torch.manual_seed(0)
    m = Net()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def test_round_trip_weights_optimizer_counters(tmp_path):
    m, opt = make()
    save_checkpoint(tmp_path, 7, {"m": m}, opt, {"lr": 1e-3}, {"env_steps": 7})
    m2 = Net()
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
    path, tensors, meta = load_latest(tmp_path)
    restore(tensors, meta, {"m": m2}, opt2)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert meta["counters"] == {"env_steps": 7} and meta["config"] == {"lr": 1e-3}


def test_keeps_last_n_and_skips_corrupt(tmp_path):
    m, opt = make()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"m": m}, opt, {}, {"env_steps": step}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt-{s:010d}.safetensors" for s in (2, 3, 4)]
    newest = list_checkpoints(tmp_path)[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern
    newest.write_bytes(bytes(data))
    said = []
    path, _, meta = load_latest(tmp_path, warn=said.append)
    assert meta["step"] == 3 and "corrupt" in said[0]


def test_a_save_cut_short_leaves_no_temp_file_behind_after_the_next(tmp_path):
    m, opt = make()
    (tmp_path / "ckpt-0000000002.safetensorsab12cd.tmp").write_bytes(b"half a checkpoint")  # a kill mid-save
    save_checkpoint(tmp_path, 3, {"m": m}, opt, {}, {"env_steps": 3})
    assert not list(tmp_path.glob("*.tmp")) and [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0000000003.safetensors"]
