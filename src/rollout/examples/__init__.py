"""Example agents. ``rollout.examples.calculator:agent`` is the default of ``rollout serve``."""
