"""The agent: the desktop as a Gymnasium env, tasks and checkers, actuator and gate, policy, act-and-learn loop.

Importing `agent` registers every task id (`squirrel/<task>-v0`) for `gymnasium.make`.
"""

from agent.registration import register_all as _register_all

_register_all()
