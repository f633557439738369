"""Where the head keeps its tables (nodes, jobs, named actors), so a restarted head
recovers them: SQLite in the state directory by default, or a Redis server
for deployments that already run one (``--storage redis://HOST:PORT/DB`` or
``unix:///path/redis.sock``; needs the ``redis`` package)."""
from __future__ import annotations

import json
import sqlite3


class SQLiteTables:
    def __init__(self, path: str):
        self.where = path
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, "
                        "info TEXT, state TEXT, death_reason TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, row TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS actors (key TEXT PRIMARY KEY, row TEXT)")

    def nodes(self):
        for node_id, info, state, reason in self.db.execute(
                "SELECT node_id, info, state, death_reason FROM nodes"):
            yield node_id, json.loads(info), state, reason

    def save_node(self, node_id: str, info: dict, state: str, reason) -> None:
        self.db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?)",
                        (node_id, json.dumps(info), state, reason))
        self.db.commit()

    def jobs(self):
        for job_id, row in self.db.execute("SELECT job_id, row FROM jobs"):
            yield job_id, json.loads(row)

    def save_job(self, job_id: str, row: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job_id, json.dumps(row)))
        self.db.commit()

    def actors(self):
        for key, row in self.db.execute("SELECT key, row FROM actors"):
            yield key, json.loads(row)

    def save_actor(self, key: str, row: dict | None) -> None:
        if row is None:
            self.db.execute("DELETE FROM actors WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO actors VALUES (?, ?)", (key, json.dumps(row)))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


class RedisTables:
    """The same tables as Redis hashes: ``shoal:nodes``, ``shoal:jobs``, ``shoal:actors``."""

    def __init__(self, url: str):
        try:
            import redis
        except ImportError:
            raise RuntimeError("--storage with a Redis URL needs the redis package: "
                               "pip install redis") from None
        self.where = url
        self.r = redis.Redis.from_url(url)
        self.r.ping()                 # fail at start, clearly, if it is not there

    def nodes(self):
        for node_id, blob in self.r.hgetall("shoal:nodes").items():
            d = json.loads(blob)
            yield node_id.decode(), d["info"], d["state"], d["death_reason"]

    def save_node(self, node_id: str, info: dict, state: str, reason) -> None:
        self.r.hset("shoal:nodes", node_id, json.dumps(
            {"info": info, "state": state, "death_reason": reason}))

    def jobs(self):
        for job_id, blob in self.r.hgetall("shoal:jobs").items():
            yield job_id.decode(), json.loads(blob)

    def save_job(self, job_id: str, row: dict) -> None:
        self.r.hset("shoal:jobs", job_id, json.dumps(row))

    def actors(self):
        for key, blob in self.r.hgetall("shoal:actors").items():
            yield key.decode(), json.loads(blob)

    def save_actor(self, key: str, row: dict | None) -> None:
        if row is None:
            self.r.hdel("shoal:actors", key)
        else:
            self.r.hset("shoal:actors", key, json.dumps(row))

    def close(self) -> None:
        self.r.close()


def open_tables(storage: str | None, default_path: str):
    if not storage:
        return SQLiteTables(default_path)
    if storage.startswith(("redis://", "rediss://", "unix://")):
        return RedisTables(storage)
    raise ValueError(f"--storage must be a redis://, rediss:// or unix:// URL, got {storage!r}")
