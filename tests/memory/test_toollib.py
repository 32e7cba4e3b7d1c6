import numpy as np
import pytest

from memory.db import AgentDB
from memory.tools import ResolveFailure, ToolLibrary, ToolStep

E = 32  # patch embedding size
KEYS = ["Tab", "Enter", "Escape", "ctrl+a", "BackSpace", "Down"]


def unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def db(tmp_path):
    with AgentDB.open(tmp_path) as d:
        yield d


def random_step(rng, appearances):
    r = rng.random()
    if r < 0.45:  # click on something: one of a few recurring widgets or a new-looking one
        if rng.random() < 0.5:
            target = appearances[rng.integers(len(appearances))] + 0.05 * rng.standard_normal(E)
        else:
            target = rng.standard_normal(E)
        return ToolStep(rng.choice(["click", "double_click", "scroll_down"]).item(), target=unit(target),
                        offset=(rng.random(), rng.random()))
    if r < 0.8:
        return ToolStep("key", key=KEYS[rng.integers(len(KEYS))])
    s = int(rng.integers(0, 6))
    return ToolStep("type", span=(s, s + int(rng.integers(1, 3))))


def random_episode(rng, appearances, n=None):
    return [random_step(rng, appearances) for _ in range(n or int(rng.integers(4, 12)))] + [ToolStep("done")]


def planted(rng, ok_button):
    """The routine: click something that looks like OK, type the instruction's words 2..4, press Enter."""
    return [ToolStep("click", target=unit(ok_button + 0.1 * rng.standard_normal(E)), offset=(0.5, 0.4), label="OK"),
            ToolStep("type", span=(2, 4)), ToolStep("key", key="Enter")]


def test_mining_finds_a_planted_routine(db):
    rng = np.random.default_rng(0)
    ok = rng.standard_normal(E)
    appearances = rng.standard_normal((3, E))
    episodes, with_routine = [], []
    for i in range(40):
        ep = random_episode(rng, appearances)
        if i % 3 != 2:  # in 27 of 40 episodes, at a random place
            at = int(rng.integers(0, len(ep)))
            ep[at:at] = planted(rng, ok)
            with_routine.append(100 + i)
        episodes.append(ep)
    lib = ToolLibrary(db)
    ids = lib.mine(episodes, episode_ids=[100 + i for i in range(40)])
    assert len(ids) == 1, [lib.get(i).name for i in ids]
    tool = lib.get(ids[0])
    assert [s.kind for s in tool.steps] == ["click", "type", "key"]
    assert tool.name == "click[OK-like] → type[text1] → key Enter"
    assert tool.steps[2].key == "Enter" and tool.status == "candidate"
    assert float(unit(ok) @ tool.steps[0].target) > 0.95  # stored by appearance
    assert tool.steps[0].offset == pytest.approx((0.5, 0.4))
    assert [(p.name, p.step, p.kind, p.default) for p in tool.params] == [("text1", 1, "span", (2, 4))]
    assert tool.sources == with_routine and tool.support == len(with_routine)
    assert lib.mine(episodes, episode_ids=[100 + i for i in range(40)]) == ids  # re-mining updates, not duplicates
    assert len(lib.list()) == 1


def test_mining_invents_nothing_in_random_episodes(db):
    rng = np.random.default_rng(1)
    appearances = rng.standard_normal((3, E))
    lib = ToolLibrary(db)
    for trial in range(3):
        assert lib.mine([random_episode(rng, appearances) for _ in range(60)]) == []
    assert lib.list() == []


def test_lifecycle_prune_is_final_for_the_policy(db):
    rng = np.random.default_rng(2)
    ok = rng.standard_normal(E)
    episodes = [planted(rng, ok) + random_episode(rng, rng.standard_normal((2, E)), 3) for _ in range(10)]
    lib = ToolLibrary(db, demote_after=2)
    (tid,) = lib.mine(episodes)
    assert lib.candidates_for_policy() == []  # candidates wait for approval
    lib.approve(tid)
    assert [t.id for t in lib.candidates_for_policy()] == [tid]
    lib.rename(tid, "fill the OK form")
    lib.prune(tid)
    assert lib.candidates_for_policy() == [] and lib.get(tid).status == "pruned"
    lib.mine(episodes)  # mining finds it again, but it stays pruned and keeps its name
    t = lib.get(tid)
    assert (t.status, t.name, t.renamed) == ("pruned", "fill the OK form", True)
    assert lib.candidates_for_policy() == [] and [x.id for x in lib.list("pruned")] == [tid]
    lib.restore(tid)
    assert lib.get(tid).status == "candidate"
    lib.approve(tid)
    lib.record_call(tid, True)
    lib.record_call(tid, False)
    t = lib.get(tid)
    assert (t.calls, t.successes, t.status) == (2, 1, "active") and t.last_used is not None
    lib.record_call(tid, False)  # second failure in a row: demoted
    assert lib.get(tid).status == "candidate" and lib.candidates_for_policy() == []
    with pytest.raises(KeyError):
        lib.approve(999)


def test_resolve_matches_by_appearance_or_fails_with_a_reason(db):
    rng = np.random.default_rng(3)
    ok, field = rng.standard_normal(E), rng.standard_normal(E)
    episodes = []
    for _ in range(8):
        episodes.append([ToolStep("click", target=unit(field + 0.05 * rng.standard_normal(E))), ToolStep("type", span=(0, 1)),
                         ToolStep("click", target=unit(ok + 0.05 * rng.standard_normal(E)), label="OK")]
                        + random_episode(rng, rng.standard_normal((2, E)), 2))
    lib = ToolLibrary(db)
    (tid,) = lib.mine(episodes)
    screen = rng.standard_normal((130, E)).astype(np.float32)  # a new layout: targets at new places
    screen[17] = ok + 0.1 * rng.standard_normal(E)
    screen[88] = field + 0.1 * rng.standard_normal(E)
    res = lib.resolve(tid, screen, threshold=0.8)
    assert res and [(s.kind, i) for s, i in res] == [("click", 88), ("type", None), ("click", 17)]
    other = rng.standard_normal((130, E)).astype(np.float32)
    other[88] = screen[88]  # the field is there but no OK button
    fail = lib.resolve(lib.get(tid), other, threshold=0.8)
    assert isinstance(fail, ResolveFailure) and not fail
    assert fail.step == 2 and "click[OK-like]" in fail.reason and "best similarity" in fail.reason
    assert fail.best_similarity < 0.8
    assert lib.resolve(tid, other, threshold=0.8, stop=2)  # the steps before it resolve on their own
    assert "another encoder" in lib.resolve(tid, np.ones((4, E + 1)), threshold=0.8).reason


def test_mine_new_runs_incrementally_on_stored_episodes(db):
    rng = np.random.default_rng(4)
    ok = rng.standard_normal(E)
    lib = ToolLibrary(db)

    def store(steps, success):
        e = db.begin_episode("form", 0, "fill the form")
        for i, s in enumerate(steps):
            action = {"kind": s.kind, "key": s.key, "span": s.span, "offset": s.offset, "label": s.label}
            db.add_step(e, i, action, target=s.target, thumbnail=b"thumb" if s.target is not None else None)
        db.end_episode(e, success, 1.0 if success else 0.0, len(steps))
        return e

    good = [store(planted(rng, ok) + random_episode(rng, rng.standard_normal((2, E)), 3), True) for _ in range(2)]
    for _ in range(5):
        store(planted(rng, ok), False)  # failures are never mined
    assert lib.mine_new() == []  # seen in 2 successes only: below min_support
    good += [store(random_episode(rng, rng.standard_normal((2, E)), 2) + planted(rng, ok), True) for _ in range(4)]
    (tid,) = lib.mine_new()
    tool = lib.get(tid)
    assert tool.sources == good and tool.steps[0].thumbnail == b"thumb"
    assert lib.mine_new() == []  # nothing new
    assert ToolLibrary(db).get(tid).name == tool.name  # all of it persisted


def test_appearance_clusters_stay_bounded(db):
    rng = np.random.default_rng(5)
    ok = rng.standard_normal(E)
    lib = ToolLibrary(db, max_targets=40)
    episodes = [planted(rng, ok) + random_episode(rng, rng.standard_normal((1, E)), 6) for _ in range(12)]
    (tid,) = lib.mine(episodes)
    assert db.read("SELECT count(*) FROM tool_targets")[0][0] <= 40
    ids_before = {r[0] for r in db.read("SELECT id FROM tool_targets")}
    other = ToolLibrary(db, max_targets=40)  # a second library on the same database continues the ids
    other.mine([random_episode(rng, rng.standard_normal((1, E)), 8) for _ in range(5)])
    new = {r[0] for r in db.read("SELECT id FROM tool_targets")} - ids_before
    assert new and min(new) > max(ids_before)
    assert lib.mine(episodes) == [tid]  # the tool's own target cluster was kept


def test_mining_in_a_background_thread_while_the_agent_writes(db):
    """The agent writes episodes and memory on its thread; mining runs beside it on the same AgentDB."""
    import threading

    from memory.episodic import EpisodicMemory

    rng = np.random.default_rng(6)
    ok = rng.standard_normal(E)
    mem = EpisodicMemory(db, key_dim=16, capacity=200, per_task_quota=200)
    lib = ToolLibrary(db)
    stop, errors, found = threading.Event(), [], set()

    def miner():
        try:
            while not stop.is_set():
                found.update(lib.mine_new())
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=miner)
    t.start()
    try:
        for _ in range(30):
            steps = planted(rng, ok) + random_episode(rng, rng.standard_normal((2, E)), 3)
            e = db.begin_episode("form", 0, "fill the form")
            for i, s in enumerate(steps):
                db.add_step(e, i, {"kind": s.kind, "key": s.key, "span": s.span, "label": s.label}, target=s.target)
                mem.add("form", rng.standard_normal(16), {"kind": s.kind}, s.target, 0.0, True)
                mem.query(rng.standard_normal(16), 3)
            db.end_episode(e, True, 1.0, len(steps))
    finally:
        stop.set()
        t.join()
    assert errors == []
    found.update(lib.mine_new())
    assert "click[OK-like] → type[text1] → key Enter" in {lib.get(i).name for i in found}
    assert db.integrity_check() == "ok"


# -- crop targets (what the agent stores: 24x48 colour crops around the point acted on) ------------------------

def button_screen(buttons):
    """A white 160x210 screen with labelled buttons [(x, y, label, fill)], drawn in the desktop's font."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (160, 210), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.truetype("DejaVuSans.ttf", 11)
    for x, y, label, fill in buttons:
        d.rectangle([x, y, x + 44, y + 18], fill=fill, outline=(80, 80, 80))
        d.text((x + 4, y + 3), label, fill="black", font=font)
    return np.array(im)


def crop_at(frame, x, y):
    out = np.full((24, 48, 3), 255, np.float32)
    y0, x0 = y - 12, x - 24
    for j in range(24):
        for i in range(48):
            if 0 <= y0 + j < frame.shape[0] and 0 <= x0 + i < frame.shape[1]:
                out[j, i] = frame[y0 + j, x0 + i]
    return out.ravel()


GREY, BLUE = (230, 230, 230), (200, 220, 255)


def test_crop_targets_cluster_by_appearance_wherever_on_the_button_the_click_was():
    from memory.tools import crop_similarity

    a = button_screen([(20, 30, "Submit", GREY), (80, 100, "Cancel", GREY), (20, 150, "Submit", BLUE)])
    ref = crop_at(a, 42, 39)
    elsewhere = button_screen([(60, 60, "Submit", GREY)])
    shifted = np.stack([crop_at(elsewhere, 82 + dx, 69 + dy) for dx, dy in [(0, 0), (4, 0), (-8, 2), (10, -3), (2, 7), (-6, -7)]])
    assert crop_similarity(ref, shifted).min() > 0.95  # the same button, clicked at other places on it
    other = np.stack([crop_at(a, 102, 109), crop_at(a, 42, 159), np.full(24 * 48 * 3, 255, np.float32)])
    assert crop_similarity(ref, other).max() < 0.8  # another label; the same label in another colour; nothing


def test_mining_crop_targets_finds_the_routine_and_ignores_other_targets(db, tmp_path):
    rng = np.random.default_rng(3)
    episodes = []
    for _ in range(12):  # a few random keys and clicks, then click Submit (wherever it is) and press Enter
        x, y = int(rng.integers(0, 100)), int(rng.integers(0, 180))
        screen = button_screen([(x, y, "Submit", GREY)])
        ep = [ToolStep("key", key=KEYS[rng.integers(len(KEYS))]) for _ in range(2)]
        ep.append(ToolStep("click", target=crop_at(rng.integers(0, 255, (210, 160, 3)).astype(np.uint8), 80, 100)))
        ep.append(ToolStep("click", target=rng.standard_normal(E).astype(np.float32)))  # an old embedding target
        ep += [ToolStep("click", target=crop_at(screen, x + 22 + int(rng.integers(-8, 9)), y + 9)),
               ToolStep("key", key="Enter")]
        episodes.append(ep)
    lib = ToolLibrary(db, target_match="crop")
    (tid,) = lib.mine(episodes)
    tool = lib.get(tid)
    assert [s.kind for s in tool.steps] == ["click", "key"] and tool.steps[1].key == "Enter"
    assert tool.steps[0].target.shape == (24 * 48 * 3,) and tool.support == 12
    with pytest.raises(ValueError, match="by appearance"):
        lib.resolve(tool, np.zeros((4, E), np.float32))
    with AgentDB.open(tmp_path) as again:  # the clusters persist: the same routine gives the same tool
        assert ToolLibrary(again, target_match="crop").mine(episodes) == [tid]
    with pytest.raises(ValueError, match="cosine or crop"):
        ToolLibrary(db, target_match="pixels")
