"""Child process of test_memory_crash.py: writes episodes and memory entries until it is killed.

After each episode's last commit returns it prints "episode_id steps" and flushes, so the parent
knows exactly which episodes must survive a SIGKILL.
"""

import sys

import numpy as np

from memory.db import AgentDB
from memory.episodic import EpisodicMemory


def main(home: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    db = AgentDB.open(home)
    db.abandon_unfinished()
    mem = EpisodicMemory(db, key_dim=32, capacity=400, per_task_quota=250)
    print("ready", flush=True)
    while True:
        task = f"task{rng.integers(3)}"
        n = int(rng.integers(1, 8))
        e = db.begin_episode(task, seed, "click the button, then type a word")
        for i in range(n):
            db.add_step(e, i, {"kind": "click", "offset": [0.5, 0.5]}, reward=float(i == n - 1),
                        embedding_ids=[i], target=rng.standard_normal(16), thumbnail=bytes(64))
        success = bool(rng.random() < 0.3)
        mem.add_many(task, rng.standard_normal((n, 32)), [{"kind": "click"}] * n, list(rng.standard_normal((n, 16))),
                     list(rng.random(n)), [success] * n, [bytes(32)] * n, episode_id=e, steps=list(range(n)))
        db.end_episode(e, success, float(success), n)
        sys.stdout.write(f"{e} {n}\n")
        sys.stdout.flush()
        if rng.random() < 0.1:
            mem.save()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
