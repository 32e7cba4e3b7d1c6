"""History: the policy is told what it did last in the episode, so steps that look alike can differ."""

from pathlib import Path

import numpy as np
import torch

from agent.actions import ActionType
from agent.fake import FakeDesktopEnv
from agent.gate import GateConfig, SafetyGate
from agent.learner import Agent, AgentConfig, Learner, ObsBatch
from agent.policy import N_TYPES, ActionBatch, History
from trainer.ppo import PPOConfig

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-encoder.json")


def agent_with(history: bool) -> Agent:
    torch.manual_seed(0)
    np.random.seed(0)
    return Agent(AgentConfig(encoder=TINY, threads=1, memory=False, reading=False, history=history, rollout=32,
                             ppo=PPOConfig(minibatch=16, epochs=1)))


def click(patch: int) -> ActionBatch:
    d = dict(type=int(ActionType.CLICK), patch=patch, sub=5, patch2=0, sub2=0, key=0, start=0, length=0, tool=0)
    return ActionBatch(**{k: torch.tensor([v]) for k, v in d.items()})


def test_history_features_say_the_last_type_its_patch_whether_it_changed_and_how_many_came_before():
    h = History()
    start = h.features()
    assert start[:N_TYPES + 1].sum() == 0 and start[N_TYPES + 1] == 0 and start[N_TYPES + 2] == 1 and start[-1] == -1
    h.after(click(7), changed=True)
    f = h.features()
    assert f[ActionType.CLICK] == 1 and f[:N_TYPES + 1].sum() == 1 and f[N_TYPES + 1] == 1 and f[N_TYPES + 3] == 1
    assert f[-1] == 7
    key = click(7)._replace(type=torch.tensor([int(ActionType.KEY)]))
    for _ in range(4):
        h.after(key, changed=False)
    f = h.features()
    assert f[ActionType.KEY] == 1 and f[N_TYPES + 1] == 0 and f[N_TYPES + 5] == 1 and f[-1] == -1  # 3+, no point
    frames = [np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)]
    along = History.along(frames, [click(3), click(4), click(5)])
    assert torch.equal(along[0], start) and along[1][N_TYPES + 1] == 1 and along[2][N_TYPES + 1] == 0
    assert along[2][-1] == 4


def test_told_its_history_the_policy_learns_what_identical_screens_cannot_say():
    """The same screen twice: the first decision should click patch A, the second patch B. Without history the
    best the policy can do is p = 0.5 for each; told what it did last, it learns both."""
    A, B = 3, 40
    frame = np.full((210, 160, 3), 255, np.uint8)
    frame[60:90, 60:90] = (30, 60, 220)
    h = History()
    first = h.features()
    h.after(click(A), changed=True)
    second = h.features()
    acts = ActionBatch(*(torch.cat(f) for f in zip(click(A), click(B))))
    result = {}
    for history in (False, True):
        agent = agent_with(history)
        obs = ObsBatch(np.stack([frame, frame]), ["Click the blue box twice."] * 2, history=[first, second])
        for _ in range(400):
            loss = -agent.evaluate(obs, acts).logp.mean()
            agent.optimizer.zero_grad()
            loss.backward()
            agent.optimizer.step()
        with torch.no_grad():
            o, _ = agent._forward(obs)
        p = o.patch_logits.softmax(-1)
        result[history] = (float(p[0, A]), float(p[1, B]))
    assert max(result[False]) < 0.6, result  # it cannot tell the two apart
    assert min(result[True]) > 0.8, result


def test_the_learner_tells_the_policy_each_steps_history_and_starts_afresh_each_episode():
    env = SafetyGate(FakeDesktopEnv("type", max_steps=3), GateConfig(max_actions_per_s=1e6))
    agent = agent_with(True)
    learner = Learner(agent, env, ["fake-type"])
    episodes = []
    learner.episode_callbacks.append(lambda r: episodes.append(r.transitions))
    learner.run(60)
    assert len(episodes) >= 5
    for steps in episodes:
        for i, s in enumerate(steps):
            assert s.history[N_TYPES + 2 + min(i, 3)] == 1, (i, s.history)
            if i:
                prev = steps[i - 1]
                assert s.history[int(prev.action.type[0])] == 1 and s.history[N_TYPES + 1] == float(prev.changed)
            else:
                assert s.history[:N_TYPES + 2].sum() == 0


def test_a_checkpoint_from_before_the_history_is_told_to_load_with_no_history(tmp_path):
    import pytest

    from agent.learn_cli import LearnConfig, LearnRun, option_flags
    from squirrel.errors import UserError

    # a checkpoint's config that predates an option does not name it: then there was no such thing
    assert option_flags({"memory": True, "rollout": 64}, {"memory": True, "rollout": 64, "history": True}) == [
        "--agent.no-history"]
    cfg = LearnConfig(tasks="fake-click", steps=64, home=str(tmp_path), tensorboard=False, progress=False,
                      agent=AgentConfig(encoder=TINY, threads=1, rollout=64, memory=False, history=False))
    run = LearnRun(cfg, ["fake-click"])
    run.start()
    run.loop()
    run.close()
    cfg.resume, cfg.agent = True, AgentConfig(encoder=TINY, threads=1, rollout=64, memory=False, history=True)
    run2 = LearnRun(cfg, ["fake-click"])
    try:
        with pytest.raises(UserError, match="--agent.no-history"):
            run2.start()
    finally:
        run2.close()
