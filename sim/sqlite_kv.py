"""A tiny durable JSON key-value table in SQLite (file 0600): each ``put_many`` is one committed
transaction, so a killed process finds either all of a step's writes or none."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path


def open_db(path: Path) -> sqlite3.Connection:
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class JsonKV:
    def __init__(self, path: Path):
        self.db = open_db(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put_many(self, items: dict) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def close(self) -> None:
        self.db.close()
