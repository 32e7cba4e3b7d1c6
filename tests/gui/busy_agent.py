"""The panel's agent process with an update that takes 30 s (a stand-in for a big encoder's update)."""

import sys
import time

from agent.learner import Learner

_update = Learner._update


def slow_update(self):
    print("update starts", flush=True)
    time.sleep(30)  # Python-level, so an interrupt lands here, like between two torch ops
    _update(self)


Learner._update = slow_update

from gui.agent_process import main  # noqa: E402

main(sys.argv[1:])
