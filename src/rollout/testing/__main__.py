"""``python -m rollout.testing [--host H] [--port P] [--behaviour B] [--api-key K]``: run until
SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
from functools import partial

import click
import trio

from ._app import MockTrainer
from ._serve import serve


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "-p",
    "--port",
    envvar="MOCK_TRAINER_PORT",
    type=click.IntRange(0, 65535),
    default=9001,
    show_default=True,
    show_envvar=True,
)
@click.option(
    "--behaviour",
    type=click.Choice(["calculator", "always_tools"]),
    default="calculator",
    show_default=True,
)
@click.option(
    "--api-key",
    envvar="MOCK_TRAINER_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on both callbacks (401 otherwise).",
)
@click.option(
    "--openai-compatible",
    is_flag=True,
    help="Answer as an OpenAI-compatible server (a model required, no token ids), for"
    " rollout test --base-url http://HOST:PORT/v1.",
)
def main(
    host: str, port: int, behaviour: str, api_key: str | None, openai_compatible: bool
) -> None:
    """A trainer simulator: scripted calculator model, result recording."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trainer = MockTrainer(
        behaviour=behaviour,  # type: ignore[arg-type]
        api_key=api_key,
        openai_compatible=openai_compatible,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(serve, trainer, host, port, shutdown_trigger=_until_signal)
            )
            click.echo(f"mock trainer listening on http://{host}:{bound}")

    try:
        trio.run(run)
    except BaseExceptionGroup as group:  # raised through Trio nurseries
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        raise click.ClickException(f"cannot listen on {host}:{port}: {_leaf(matched)}") from None


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


main()
