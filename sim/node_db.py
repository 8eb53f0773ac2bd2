"""The simulated node's database (SQLite, ``node.sqlite``, 0600), committed where channeld and
lightningd commit: after sending commitment_signed is decided (naive: after signing; wal: the
intent before signing), after validating the peer's commitment, after its revocation.

Tables: channel (indices and the committed state), commitments (each side's state per
index), points (per-commitment points learned), peer_secrets (revealed by the peer), intents
(the write-ahead log of signing intents, used by the ``wal`` discipline).
"""

from __future__ import annotations

import json
from pathlib import Path

from .channel_state import ChannelState, Update
from .sqlite_kv import open_db

NODE_DB = "node.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS channel (
    dbid INTEGER PRIMARY KEY, peer_id BLOB NOT NULL, params TEXT NOT NULL,
    next_remote INTEGER NOT NULL,        -- remote commitments sent (commitment_signed decided)
    next_local INTEGER NOT NULL,         -- local commitments validated and saved
    next_remote_revoke INTEGER NOT NULL  -- remote commitments whose revocation we hold
);
CREATE TABLE IF NOT EXISTS commitments (
    dbid INTEGER, side TEXT, num INTEGER, updates TEXT NOT NULL, state TEXT NOT NULL, sigs TEXT,
    PRIMARY KEY (dbid, side, num)
);
CREATE TABLE IF NOT EXISTS points (dbid INTEGER, owner TEXT, num INTEGER, point BLOB NOT NULL, PRIMARY KEY (dbid, owner, num));
CREATE TABLE IF NOT EXISTS peer_secrets (dbid INTEGER, num INTEGER PRIMARY KEY, secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS intents (dbid INTEGER, num INTEGER, updates TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (dbid, num));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class NodeDB:
    def __init__(self, datadir: Path):
        self.db = open_db(datadir / NODE_DB)
        self.db.executescript(SCHEMA)

    def tx(self):
        """A write transaction: ``with db.tx(): ...`` commits everything in it at once."""
        return _Tx(self.db)

    def close(self) -> None:
        self.db.close()

    # --- reads ---

    def channel(self, dbid: int) -> dict | None:
        row = self.db.execute("SELECT peer_id, params, next_remote, next_local, next_remote_revoke FROM channel WHERE dbid = ?",
                              (dbid,)).fetchone()
        if row is None:
            return None
        return {"peer_id": row[0], "params": json.loads(row[1]), "next_remote": row[2], "next_local": row[3],
                "next_remote_revoke": row[4]}

    def commitment(self, dbid: int, side: str, num: int) -> tuple[list[Update], ChannelState] | None:
        row = self.db.execute("SELECT updates, state FROM commitments WHERE dbid = ? AND side = ? AND num = ?",
                              (dbid, side, num)).fetchone()
        if row is None:
            return None
        return [Update.from_json(u) for u in json.loads(row[0])], ChannelState.from_json(json.loads(row[1]))

    def commitments(self, dbid: int) -> dict[tuple[str, int], tuple[list[Update], ChannelState]]:
        """Every saved commitment of the channel, by (side, number): what a test or a post-mortem
        compares with the peer's and the signer's state."""
        rows = self.db.execute("SELECT side, num, updates, state FROM commitments WHERE dbid = ? ORDER BY side, num",
                               (dbid,))
        return {(side, num): ([Update.from_json(u) for u in json.loads(updates)], ChannelState.from_json(json.loads(state)))
                for side, num, updates, state in rows}

    def point(self, dbid: int, owner: str, num: int) -> bytes | None:
        row = self.db.execute("SELECT point FROM points WHERE dbid = ? AND owner = ? AND num = ?", (dbid, owner, num)).fetchone()
        return None if row is None else bytes(row[0])

    def intent(self, dbid: int, num: int) -> tuple[list[Update], ChannelState] | None:
        row = self.db.execute("SELECT updates, state FROM intents WHERE dbid = ? AND num = ?", (dbid, num)).fetchone()
        if row is None:
            return None
        return [Update.from_json(u) for u in json.loads(row[0])], ChannelState.from_json(json.loads(row[1]))

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # --- writes (call inside ``with db.tx()``) ---

    def create_channel(self, dbid: int, peer_id: bytes, params: dict) -> None:
        self.db.execute("INSERT INTO channel VALUES (?, ?, ?, 1, 1, 0)", (dbid, peer_id, json.dumps(params)))

    def set_indices(self, dbid: int, **indices: int) -> None:
        for name, value in indices.items():
            assert name in ("next_remote", "next_local", "next_remote_revoke")
            self.db.execute(f"UPDATE channel SET {name} = ? WHERE dbid = ?", (value, dbid))

    def save_commitment(self, dbid: int, side: str, num: int, updates: list[Update], state: ChannelState, sigs=None) -> None:
        self.db.execute("INSERT OR REPLACE INTO commitments VALUES (?, ?, ?, ?, ?, ?)",
                        (dbid, side, num, json.dumps([u.to_json() for u in updates]), json.dumps(state.to_json()),
                         None if sigs is None else json.dumps(sigs)))

    def save_point(self, dbid: int, owner: str, num: int, point: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?)", (dbid, owner, num, point))

    def save_peer_secret(self, dbid: int, num: int, secret: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO peer_secrets VALUES (?, ?, ?)", (dbid, num, secret))

    def save_intent(self, dbid: int, num: int, updates: list[Update], state: ChannelState) -> None:
        self.db.execute("INSERT OR REPLACE INTO intents VALUES (?, ?, ?, ?)",
                        (dbid, num, json.dumps([u.to_json() for u in updates]), json.dumps(state.to_json())))

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


class _Tx:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
