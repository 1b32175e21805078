"""The transactions of the SQLite store (:mod:`rollout._store.sqlite`): each function runs
inside one ``BEGIN IMMEDIATE`` transaction, called as ``work(db, now, *args)`` with ``now``
in Unix seconds."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

__all__ = [
    "claim",
    "finish",
    "get",
    "keep_result",
    "lookup",
    "release",
    "release_result",
    "renew",
    "request_cancel",
    "save_progress",
    "sweep",
    "take_orphans",
]

from .base import Claimed, NewRollout, Orphan, Outcome, Progress, StoredPhase, StoredRollout

# ---------------------------------------------------------------------- transactions
# Each runs inside one BEGIN IMMEDIATE transaction: (db, now, *args).

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def lookup(db: sqlite3.Connection, now: float, rollout_id: str, key: str | None) -> Claimed | None:
    if key is not None:
        row = db.execute(
            f"SELECT rollout_id, digest FROM rollouts WHERE idempotency_key = ? AND {_LIVE}",
            (key, now),
        ).fetchone()
        if row is not None:
            return Claimed(row[0], bytes(row[1]), False)
    row = db.execute(
        f"SELECT digest FROM rollouts WHERE rollout_id = ? AND {_LIVE}", (rollout_id, now)
    ).fetchone()
    return None if row is None else Claimed(rollout_id, bytes(row[0]), False)


def claim(db: sqlite3.Connection, now: float, new: NewRollout, owner: str) -> Claimed:
    found = lookup(db, now, new.rollout_id, new.idempotency_key)
    if found is not None:
        return found
    # An expired record under the same id or key gives way.
    db.execute(
        "DELETE FROM rollouts WHERE expires_at <= ? AND (rollout_id = ? OR idempotency_key = ?)",
        (now, new.rollout_id, new.idempotency_key),
    )
    db.execute(
        "INSERT INTO rollouts (rollout_id, digest, idempotency_key, server_url, api_key, owner,"
        " phase, messages, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        (
            new.rollout_id,
            new.digest,
            new.idempotency_key,
            new.server_url,
            new.api_key,
            owner,
            new.messages,
            now,
            now,
        ),
    )
    return Claimed(new.rollout_id, new.digest, True)


def get(db: sqlite3.Connection, now: float, rollout_id: str) -> StoredRollout | None:
    row = db.execute(
        "SELECT phase, owner, turns, prompt_tokens, completion_tokens, created_at, updated_at,"
        f" cancel_requested, outcome FROM rollouts WHERE rollout_id = ? AND {_LIVE}",
        (rollout_id, now),
    ).fetchone()
    if row is None:
        return None
    return StoredRollout(
        rollout_id,
        StoredPhase(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        bool(row[7]),
        _outcome(row[8]),
    )


def save_progress(
    db: sqlite3.Connection, now: float, owner: str, snapshots: Sequence[Progress]
) -> None:
    for s in snapshots:
        db.execute(
            "UPDATE rollouts SET phase = ?, turns = ?, prompt_tokens = ?, completion_tokens = ?,"
            " messages = COALESCE(?, messages), updated_at = ?"
            " WHERE rollout_id = ? AND owner = ? AND phase IN ('queued', 'running')",
            (
                s.phase.value,
                s.turns,
                s.prompt_tokens,
                s.completion_tokens,
                s.messages,
                now,
                s.rollout_id,
                owner,
            ),
        )


def keep_result(
    db: sqlite3.Connection,
    now: float,
    rollout_id: str,
    owner: str,
    result: bytes,
    outcome: Outcome,
    progress: Progress | None,
) -> bool:
    counts = (0, 0, 0) if progress is None else _counts(progress)
    cursor = db.execute(
        "UPDATE rollouts SET phase = 'delivering', result = ?, outcome = ?, updated_at = ?,"
        " turns = MAX(turns, ?), prompt_tokens = MAX(prompt_tokens, ?),"
        " completion_tokens = MAX(completion_tokens, ?)"
        " WHERE rollout_id = ? AND owner = ? AND phase IN ('queued', 'running')",
        (result, _outcome_json(outcome), now, *counts, rollout_id, owner),
    )
    return cursor.rowcount == 1


def _counts(progress: Progress) -> tuple[int, int, int]:
    return progress.turns, progress.prompt_tokens, progress.completion_tokens


def finish(
    db: sqlite3.Connection,
    now: float,
    rollout_id: str,
    phase: StoredPhase,
    ttl: float,
    outcome: Outcome | None,
) -> None:
    db.execute(
        "UPDATE rollouts SET phase = ?, api_key = NULL, messages = NULL, result = NULL,"
        " outcome = COALESCE(?, outcome), cancel_requested = 0, updated_at = ?, expires_at = ?"
        " WHERE rollout_id = ?",
        (phase.value, _outcome_json(outcome), now, now + ttl, rollout_id),
    )


def release_result(db: sqlite3.Connection, now: float, rollout_id: str, owner: str) -> None:
    db.execute(
        "UPDATE rollouts SET owner = '', updated_at = ? WHERE rollout_id = ? AND owner = ?",
        (now, rollout_id, owner),
    )


def renew(db: sqlite3.Connection, now: float, owner: str, ttl: float) -> frozenset[str]:
    db.execute(
        "INSERT INTO leases (owner, until) VALUES (?, ?)"
        " ON CONFLICT (owner) DO UPDATE SET until = excluded.until",
        (owner, now + ttl),
    )
    rows = db.execute(
        "SELECT rollout_id FROM rollouts WHERE owner = ? AND expires_at IS NULL"
        " AND cancel_requested = 1 AND phase IN ('queued', 'running')",
        (owner,),
    ).fetchall()
    return frozenset(row[0] for row in rows)


def release(db: sqlite3.Connection, now: float, owner: str) -> None:
    # Ended, not forgotten: take_orphans finds a stopped worker's rollouts by its lease.
    db.execute("UPDATE leases SET until = 0 WHERE owner = ?", (owner,))


def take_orphans(db: sqlite3.Connection, now: float, owner: str, limit: int) -> list[Orphan]:
    # The owners whose lease ended (few), then their rollouts by the owner index: never a
    # scan of every rollout in flight, which would hold up the claims queued behind it.
    lost = [
        row[0]
        for row in db.execute(
            "SELECT owner FROM leases WHERE until <= ? AND owner != ?", (now, owner)
        )
    ]
    lost.append("")  # results released for another try
    marks = ", ".join("?" * len(lost))
    rows = db.execute(
        "SELECT rollout_id, owner, server_url, api_key, digest, idempotency_key, result,"
        " messages, turns, prompt_tokens, completion_tokens, created_at FROM rollouts"
        f" WHERE expires_at IS NULL AND owner IN ({marks}) LIMIT ?",
        (*lost, limit),
    ).fetchall()
    orphans = []
    for row in rows:
        db.execute(
            "UPDATE rollouts SET owner = ?, updated_at = ? WHERE rollout_id = ?",
            (owner, now, row[0]),
        )
        orphans.append(
            Orphan(
                rollout_id=row[0],
                lost_owner=row[1],
                server_url=row[2],
                api_key=row[3],
                digest=bytes(row[4]),
                idempotency_key=row[5],
                result=None if row[6] is None else bytes(row[6]),
                messages=bytes(row[7] or b"[]"),
                turns=row[8],
                prompt_tokens=row[9],
                completion_tokens=row[10],
                created_at=row[11],
            )
        )
    # Leases long expired and owning nothing are forgotten.
    db.execute(
        "DELETE FROM leases WHERE until < ? AND owner NOT IN"
        " (SELECT owner FROM rollouts WHERE expires_at IS NULL)",
        (now - 3600.0,),
    )
    return orphans


def request_cancel(
    db: sqlite3.Connection, now: float, ids: list[str], prefix: str | None, everything: bool
) -> list[str]:
    where = "expires_at IS NULL AND cancel_requested = 0 AND phase IN ('queued', 'running')"
    if everything:
        rows = db.execute(f"SELECT rollout_id FROM rollouts WHERE {where}").fetchall()
    elif prefix is not None:
        rows = db.execute(
            f"SELECT rollout_id FROM rollouts WHERE {where} AND substr(rollout_id, 1, ?) = ?",
            (len(prefix), prefix),
        ).fetchall()
    else:
        rows = []
        for rollout_id in dict.fromkeys(ids):
            rows += db.execute(
                f"SELECT rollout_id FROM rollouts WHERE {where} AND rollout_id = ?", (rollout_id,)
            ).fetchall()
    marked = [row[0] for row in rows]
    db.executemany(
        "UPDATE rollouts SET cancel_requested = 1, updated_at = ? WHERE rollout_id = ?",
        [(now, rollout_id) for rollout_id in marked],
    )
    return marked


def sweep(db: sqlite3.Connection, now: float) -> None:
    db.execute("DELETE FROM rollouts WHERE expires_at <= ?", (now,))


def _outcome_json(outcome: Outcome | None) -> str | None:
    if outcome is None:
        return None
    return json.dumps([outcome.status, outcome.finish_reason, outcome.reward])


def _outcome(text: str | None) -> Outcome | None:
    if text is None:
        return None
    status, finish_reason, reward = json.loads(text)
    return Outcome(status, finish_reason, reward)
