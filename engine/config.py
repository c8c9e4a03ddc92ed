"""Settings from the environment (``FINCRM_*``), with safe defaults for one machine.

| variable | default | meaning |
|---|---|---|
| FINCRM_DATA_DIR | ./fincrm-data | SQLite file, generated keys, exports |
| FINCRM_DATABASE_URL | sqlite:///<data dir>/fincrm.db | any SQLAlchemy URL (postgresql+psycopg://…) |
| FINCRM_SECRET_KEY | generated into <data dir>/secret.key | Flask sessions, JWT signing, cursors |
| FINCRM_MASTER_KEY | generated into <data dir>/master.key | base64 32-byte AES-256 master key |
| FINCRM_MASTER_KEY_FILE | <data dir>/master.key | where the master key lives when not in the env |
| FINCRM_PREVIOUS_MASTER_KEYS | (none) | older keys, comma-separated base64, readable until rotated away |
| FINCRM_INDEX_KEY | generated into <data dir>/index.key | base64 key of the blind indexes (never rotates with the data key) |
| FINCRM_PASSWORD_HASH | scrypt:131072:8:1 | Werkzeug hash method for passwords (OWASP: N ≥ 2^17) |
| FINCRM_JWT_MINUTES | 30 | access-token lifetime |
| FINCRM_AUTO_INIT | 1 | create/upgrade tables when the app starts |
| FINCRM_LOGIN_RATE_LIMIT | 10 per 20 second | login attempts per client address (form and API) |
| FINCRM_DATABASE_REPLICA_URLS | (none) | PostgreSQL streaming replicas for read-only work, comma-separated URLs (refused with SQLite) |
| FINCRM_REPLICA_MAX_LAG | 10 | seconds a replica may trail the primary and still answer reads |
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .security.crypto import Keyring, load_master_key, load_previous_keys

__all__ = ["Settings"]


def _secret_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    secret_key: str
    master_key: bytes
    previous_keys: tuple[bytes, ...]
    index_key: bytes
    key_file: Path
    password_hash: str
    jwt_minutes: int
    auto_init: bool
    login_rate_limit: str
    replica_urls: tuple[str, ...] = ()
    replica_max_lag: float = 10.0

    def keyring(self) -> Keyring:
        return Keyring(self.master_key, list(self.previous_keys), self.index_key)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> "Settings":
        env = {**os.environ, **{k: str(v) for k, v in (overrides or {}).items()}}
        data_dir = Path(env.get("FINCRM_DATA_DIR", "fincrm-data")).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        url = env.get("FINCRM_DATABASE_URL") or f"sqlite:///{data_dir / 'fincrm.db'}"
        secret = env.get("FINCRM_SECRET_KEY") or _secret_file(data_dir / "secret.key")
        key_file = Path(env.get("FINCRM_MASTER_KEY_FILE") or data_dir / "master.key")
        replicas = _replica_urls(url, env.get("FINCRM_DATABASE_REPLICA_URLS", ""))
        return cls(
            data_dir=data_dir,
            database_url=url,
            secret_key=secret,
            master_key=load_master_key(env.get("FINCRM_MASTER_KEY"), key_file),
            previous_keys=tuple(load_previous_keys(env.get("FINCRM_PREVIOUS_MASTER_KEYS"), key_file)),
            index_key=load_master_key(env.get("FINCRM_INDEX_KEY"), data_dir / "index.key"),
            key_file=key_file,
            password_hash=env.get("FINCRM_PASSWORD_HASH", "scrypt:131072:8:1"),
            jwt_minutes=int(env.get("FINCRM_JWT_MINUTES", "30")),
            auto_init=env.get("FINCRM_AUTO_INIT", "1") not in ("0", "false", "no"),
            login_rate_limit=env.get("FINCRM_LOGIN_RATE_LIMIT", "10 per 20 second"),
            replica_urls=replicas,
            replica_max_lag=float(env.get("FINCRM_REPLICA_MAX_LAG", "10")),
        )


def _replica_urls(primary: str, value: str) -> tuple[str, ...]:
    """The replica URLs of ``FINCRM_DATABASE_REPLICA_URLS``; refused unless primary and replicas
    are PostgreSQL (SQLite has no replicas: a setting that silently did nothing would mislead)."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if urls and not primary.startswith("postgresql"):
        raise ValueError(
            "FINCRM_DATABASE_REPLICA_URLS is set but FINCRM_DATABASE_URL is not PostgreSQL: "
            "read replicas are PostgreSQL streaming replicas; unset it or use a PostgreSQL primary"
        )
    for i, url in enumerate(urls, 1):
        if not url.startswith("postgresql"):
            raise ValueError(f"FINCRM_DATABASE_REPLICA_URLS: entry {i} is not a postgresql:// URL")
    return urls
