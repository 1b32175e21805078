"""A trainer simulator for development, tests and demos: ``rollout.testing``.

It plays the trainer side of the protocol (docs/PROTOCOL.md §4 and §5) with raw JSON (it
imports nothing else of ``rollout``, so it checks the server from the outside): a scripted
calculator model on ``/v1/chat/completions``, result recording on
``/v1/rollout/completed``, and scripted faults. Serve it with
``python -m rollout.testing --port 9001``, or in a test::

    mock = MockTrainer()
    port = await nursery.start(serve, mock, "127.0.0.1", 0)
"""

from ._app import Fault, MockTrainer, RecordedRequest, create_app
from ._model import respond
from ._serve import serve

__all__ = ["Fault", "MockTrainer", "RecordedRequest", "create_app", "respond", "serve"]
