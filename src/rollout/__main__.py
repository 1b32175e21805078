"""``python -m rollout`` is the ``rollout`` command."""

from .cli import main

main()
