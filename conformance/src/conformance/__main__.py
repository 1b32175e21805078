"""``python -m conformance --target URL``."""

from .cli import main

main()
