"""The least an HTTP API can cost: a bare Flask app running the same SQL with psycopg.

Served under gunicorn exactly like FinCRM (2 sync workers), it answers get-by-id and one list
page with the statements FinCRM's records service emits for the same request (same columns,
same WHERE/ORDER BY/LIMIT), without authentication, policy, masking or metadata.

    BARE_DSN=postgresql://postgres@127.0.0.1:5432/fincrm_bench gunicorn -w 2 -b 127.0.0.1:8101 bench.bare_app:app
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from typing import Any

from flask import Flask, Response, request
from psycopg_pool import ConnectionPool

COLUMNS = (
    "id, version, created_at, updated_at, created_by, updated_by, name, gender, birth_date, id_number, mobile, email, "
    "occupation, risk_preference, aum, lifecycle_stage, acquisition_channel, owner, branch, opened_on"
)

app = Flask(__name__)
_pool: ConnectionPool | None = None


def pool() -> ConnectionPool:
    global _pool
    if _pool is None:  # created after gunicorn forks: one pool per worker
        _pool = ConnectionPool(os.environ["BARE_DSN"], min_size=2, max_size=4, open=True)
    return _pool


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _json(data: Any) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_default), mimetype="application/json")


@app.get("/customers/<int:rid>")
def get_customer(rid: int) -> Response:
    with pool().connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM e_customer WHERE id = %s AND retained_at IS NULL", (rid,))
        row = cur.fetchone()
        names = [d.name for d in cur.description or ()]
    if row is None:
        return Response('{"error":"not found"}', status=404, mimetype="application/json")
    return _json(dict(zip(names, row)))


@app.get("/customers")
def list_customers() -> Response:
    owner = int(request.args["owner"])
    with pool().connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM e_customer WHERE retained_at IS NULL AND owner = %s AND lifecycle_stage IN ('growing', 'mature') "
            "ORDER BY aum DESC, id ASC LIMIT 51",
            (owner,),
        )
        names = [d.name for d in cur.description or ()]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return _json({"items": rows[:50], "next_cursor": "x" if len(rows) > 50 else None})
