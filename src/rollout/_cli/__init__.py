"""The ``rollout`` command line's parts; the entry point is :mod:`rollout.cli`."""
