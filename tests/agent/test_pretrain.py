"""The reading prior (squirrel pretrain) and its bench (squirrel bench reading), on tiny budgets."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.screens import HEADER, HELDOUT_WORDS, TRAIN_WORDS, click_button_screen, random_screen
from squirrel.errors import UserError

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUIRREL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pretrain"


def tiny_cfg(**kw):
    from agent.pretrain import PretrainConfig

    return PretrainConfig(**dict(dict(encoder=TINY, steps=40, batch=6, queries=2, eval_screens=10, progress=False), **kw))


def test_generated_words_are_drawn_where_the_generator_says_and_never_from_the_bench_vocabularies():
    reserved = {w.lower() for w in TRAIN_WORDS + HELDOUT_WORDS}
    for seed in range(20):
        frame, words = random_screen(np.random.default_rng(seed))
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and len(words) >= 2
        assert len({w.text for w in words}) == len(words)  # one answer per query
        for w in words:
            assert w.text.lower() not in reserved
            assert 0 <= w.x0 < w.x1 <= 160 and 0 <= w.y0 < w.y1 <= 210
            box = frame[w.y0:w.y1, w.x0:w.x1].astype(int)
            # ink: the box holds pixels far from its most common colour (the background behind the word)
            colours, counts = np.unique(box.reshape(-1, 3), axis=0, return_counts=True)
            bg = colours[counts.argmax()]
            assert (np.abs(box - bg).sum(-1) > 150).sum() >= 4, (seed, w)
    # the bench's click-button screens: the pixel matcher finds the target word inside the target button
    from agent.instruction import render_word
    from agent.reading import CELL, match_maps

    hits = 0
    for seed in range(30):
        frame, instruction, (x0, y0, x1, y1), buttons = click_button_screen(np.random.default_rng(seed))
        assert 3 <= len(buttons) <= 5 and instruction == f'Click the "{buttons[0][0]}" button.'
        px, width = render_word(buttons[0][0])
        m = match_maps(frame[None], px[None, None], np.array([[width]]), np.array([[True]]))[0, 0]
        m[: HEADER // CELL + 1] = -1.0  # below the header (which shows the instruction, so the word as well)
        cy, cx = divmod(int(m.argmax()), m.shape[1])
        hits += x0 <= cx * CELL + 2 < x1 and y0 <= cy * CELL + 2 < y1
    assert hits >= 29


def test_tiny_pretrain_lowers_its_loss_writes_a_hashed_prior_and_reuses_it(cache):
    from agent.pretrain import config_hash, pretrain

    cfg = tiny_cfg()
    info = pretrain(cfg, log=lambda *_: None)
    assert not info["reused"] and info["final_loss"] < info["first_loss"] - 0.3
    path = Path(info["path"])
    assert path.parent == cache and path.name == f"tiny-encoder-{config_hash(cfg)}.safetensors"
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(path.with_suffix(".json").read_text())["config_hash"] == config_hash(cfg)
    mtime = path.stat().st_mtime_ns
    again = pretrain(tiny_cfg(), log=lambda *_: None)  # same config: found, not trained again
    assert again["reused"] and again["path"] == str(path) and path.stat().st_mtime_ns == mtime
    assert config_hash(tiny_cfg(seed=1)) != config_hash(cfg) and config_hash(tiny_cfg(threads=2)) == config_hash(cfg)
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")  # a damaged prior is never reused: trained again
    fixed = pretrain(tiny_cfg(), log=lambda *_: None)
    assert not fixed["reused"] and fixed["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_agent_starts_from_the_prior_and_keeps_training_it(cache):
    from safetensors.torch import load_file

    from agent.learner import Agent, AgentConfig
    from agent.pretrain import pretrain

    info = pretrain(tiny_cfg(steps=5), log=lambda *_: None)
    saved = load_file(info["path"])
    for pretrained in (info["path"], "auto"):
        agent = Agent(AgentConfig(encoder=TINY, pretrained=pretrained, learned_matcher=True))
        visual = agent.policy.encoder.visual.state_dict()
        assert all(torch.equal(visual[k[len("visual."):]], v) for k, v in saved.items() if k.startswith("visual."))
        assert torch.equal(agent.policy.matcher.proj.weight, saved["reading.proj.weight"])
        assert all(p.requires_grad for p in agent.policy.encoder.parameters())  # a starting point, not a freeze
        agent.policy.use_pixel_match(False)
        assert float(agent.policy.learned_gain) == pytest.approx(float(saved["reading.scale"]) / 4.0)


def test_by_default_the_agent_starts_from_the_cached_prior_or_says_how_to_make_one(cache, capsys):
    from agent import learner
    from agent.learner import Agent, AgentConfig
    from agent.pretrain import pretrain

    learner._NOTED.discard(TINY)
    torch.manual_seed(0)
    a = Agent(AgentConfig(encoder=TINY))  # the default: pretrained "auto", nothing cached yet
    assert a.pretrained_from is None and "squirrel pretrain" in capsys.readouterr().out
    Agent(AgentConfig(encoder=TINY))
    assert capsys.readouterr().out == ""  # said once
    info = pretrain(tiny_cfg(steps=5), log=lambda *_: None)
    b = Agent(AgentConfig(encoder=TINY))
    assert b.pretrained_from == info["path"] and b.policy.learned_matcher
    assert Agent(AgentConfig(encoder=TINY, pretrained="")).pretrained_from is None  # empty: random init


def test_a_missing_or_corrupt_prior_is_a_one_line_user_error(cache, tmp_path):
    from perception.encoder import create_encoder
    from squirrel.cli import main

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    for pretrained in (str(bad), str(tmp_path / "missing.safetensors"), "auto"):
        with pytest.raises(UserError) as e:
            create_encoder(TINY, pretrained)
        assert "\n" not in str(e.value)
    assert "squirrel pretrain" in str(pytest.raises(UserError, create_encoder, TINY, "auto").value)
    assert main(["pretrain", "--steps", "0"]) == 2


def test_click_label_env_checks_and_its_oracle_succeeds():
    from gymnasium.utils.env_checker import check_env

    from agent.actions import Action, ActionType
    from agent.bench_reading import ClickLabelEnv

    env = ClickLabelEnv(HELDOUT_WORDS)
    check_env(env, skip_render_check=True)
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        assert obs["instruction"].split('"')[1] in HELDOUT_WORDS
        _, r, term, trunc, info = env.step(env.oracle_action())
        assert (r, term, trunc, info["success"]) == (1.0, True, False, True)
        env.reset(seed=seed)
        _, r, _, _, info = env.step(Action(ActionType.CLICK, 1, 1))  # the header: no button there
        assert r == -1.0 and info["success"] is False


def test_bench_reading_on_a_tiny_budget_writes_every_key(cache, tmp_path):
    from agent.bench_reading import main

    out = tmp_path / "reading.json"
    assert main(["--variants", "baseline,both", "--encoder", TINY, "--episodes", "6", "--eval-every", "3",
                 "--eval-episodes", "2", "--final-episodes", "3", "--capacity-steps", "1", "--capacity-batch", "2",
                 "--pretrain.steps", "3", "--pretrain.eval-screens", "2", "--no-progress", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["finished"] and res["pretrain_minutes"] >= 0 and 0 <= res["capacity"]["success"] <= 1
    assert [r["variant"] for r in res["runs"]] == ["baseline", "both"]
    for r in res["runs"]:
        assert set(r) >= {"variant", "task", "curve", "final_success", "episodes_to_90", "heldout_vocab_success"}
        assert [e for e, _ in r["curve"]] == [0, 3, 6] and all(0 <= s <= 1 for _, s in r["curve"])
        assert r["episodes_to_90"] is None or r["episodes_to_90"] in (0, 3, 6)
    with pytest.raises(UserError):
        main(["--variants", "nonsense", "--json", str(out)])


def test_sigterm_stops_pretrain_cleanly_and_leaves_no_prior(cache):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).parents[2]
    p = subprocess.Popen([sys.executable, "-m", "squirrel", "pretrain", "--encoder", TINY, "--steps", "100000",
                          "--no-progress"], cwd=root, env=dict(os.environ), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # once it says it is training (a signal during imports is another test)
        assert first.startswith("pretrain: training"), first + p.stderr.read()
        time.sleep(1)
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "squirrel: stopped."
    assert not list(cache.glob("*.safetensors")) and not list(cache.glob("*.tmp"))  # a half-trained prior is not kept
