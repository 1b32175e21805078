"""A standalone trainer simulator for development, tests and demos.

It plays the trainer side of the Remote Rollout Protocol with raw JSON (it does not import
``rollout``): a scripted calculator model on ``/v1/chat/completions``, result recording on
``/v1/rollout/completed``, and scripted faults. ``python -m mock_trainer --port 9001``.
"""

from ._serve import serve
from .app import Fault, MockTrainer, RecordedRequest, create_app
from .model import respond

__all__ = ["Fault", "MockTrainer", "RecordedRequest", "create_app", "respond", "serve"]
