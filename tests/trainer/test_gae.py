import torch

from trainer.gae import gae


def test_terminated_does_not_bootstrap_truncated_does():
    r = torch.tensor([0.0, 1.0, 0.0, 0.0])
    v = torch.tensor([0.5, 0.5, 0.5, 0.5])
    nv = torch.tensor([0.5, 9.0, 0.5, 2.0])  # 9.0 must be ignored (terminated), 2.0 used (truncated)
    term = torch.tensor([False, True, False, False])
    trunc = torch.tensor([False, False, False, True])
    adv, ret = gae(r, v, term, trunc, nv, gamma=0.9, lam=1.0)
    d1 = 1.0 - 0.5  # terminal: no bootstrap
    d0 = 0.0 + 0.9 * 0.5 - 0.5
    assert torch.isclose(adv[1], torch.tensor(d1)) and torch.isclose(adv[0], torch.tensor(d0 + 0.9 * d1))
    d3 = 0.0 + 0.9 * 2.0 - 0.5  # truncated: bootstrap from the final observation's value
    d2 = 0.0 + 0.9 * 0.5 - 0.5
    assert torch.isclose(adv[3], torch.tensor(d3)) and torch.isclose(adv[2], torch.tensor(d2 + 0.9 * d3))
    assert torch.allclose(ret, adv + v)


def test_a_floor_on_the_advantage_spread_keeps_noise_small_and_leaves_real_spread_alone():
    from trainer.ppo import normalise_advantages

    noise = torch.tensor([-0.02, 0.01, 0.03, -0.01])  # every episode failed: what is left is the value's noise
    assert normalise_advantages(noise).std() > 0.99  # plain normalisation makes it a full-size step
    assert normalise_advantages(noise, 0.3).abs().max() < 0.15
    real = torch.tensor([-1.0, 0.5, 1.0, -0.5])
    assert torch.allclose(normalise_advantages(real, 0.3), normalise_advantages(real))
