"""The agent: the desktop as a Gymnasium env, tasks and checkers, actuator and gate, policy, act-and-learn loop."""
