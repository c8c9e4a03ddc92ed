"""Streaming replication (issue #9, Replicate): reads on a replica, writes and read-your-writes on
the primary, a replica going down, and failover to a promoted replica with no committed,
replicated write lost and the audit chain intact.

The module brings its own PostgreSQL (a primary and a hot standby on loopback, see
``tests/pgcluster.py``), so it runs in the SQLite pass of the suite as well.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.api_helpers import Logins, add_staff, app_config, dispose
from tests.pgcluster import Cluster, Node, free_port, require_binaries, start_primary

require_binaries()

CUSTOMERS = "/api/v1/records/customer"
LABEL = {"zh": "复制测试", "en": "Replication test"}


def make_app(data_dir: Path, primary: str, replicas: list[str] | None = None, **extra: Any) -> Any:
    """The app as an operator configures it: FINCRM_DATABASE_URL and the replica URLs."""
    from app import create_app

    config = app_config(str(data_dir), primary)
    if replicas:
        config["FINCRM_DATABASE_REPLICA_URLS"] = ",".join(replicas)
    config.update(extra)
    application = create_app(config)
    add_staff(application)
    return application


def routes(application: Any) -> dict[str, Any]:
    return application.extensions["fincrm"].runtime.read_routes()  # type: ignore[no-any-return]


def replica_reads(application: Any) -> int:
    return sum(r["reads"] for r in routes(application)["replicas"])


def new_customer(client: Any, headers: dict[str, str], name: str) -> int:
    resp = client.post(CUSTOMERS, json={"name": name, "aum": "1000"}, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return int(resp.json["id"])


def all_ids(client: Any, headers: dict[str, str]) -> set[int]:
    ids: set[int] = set()
    cursor = None
    while True:
        query = f"{CUSTOMERS}?limit=500&fields=name" + (f"&cursor={cursor}" if cursor else "")
        resp = client.get(query, headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        ids |= {int(item["id"]) for item in resp.json["items"]}
        cursor = resp.json["next_cursor"]
        if cursor is None:
            return ids


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_primary()
    try:
        c.add_replica("replica")
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def routed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An app on the primary whose reads may go to the replica (lag allowed: a whole test)."""
    application = make_app(
        tmp_path_factory.mktemp("replication"), cluster.primary.url, [cluster.replicas[0].url], FINCRM_REPLICA_MAX_LAG="600"
    )
    application.fincrm_test_logins = {}
    try:
        yield application
    finally:
        dispose(application)


@pytest.fixture
def paused(cluster: Cluster) -> Iterator[Node]:
    """The replica with WAL replay paused: it keeps receiving, but shows nothing new."""
    replica = cluster.replicas[0]
    cluster.wait_caught_up(replica)
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        yield replica
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
        cluster.wait_caught_up(replica)


def test_replica_urls_need_a_postgresql_primary(tmp_path: Path) -> None:
    from engine.config import Settings

    with pytest.raises(ValueError, match="FINCRM_DATABASE_REPLICA_URLS.*not PostgreSQL"):
        Settings.load(
            {
                "FINCRM_DATA_DIR": str(tmp_path),
                "FINCRM_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                "FINCRM_DATABASE_REPLICA_URLS": "postgresql+psycopg://postgres:secret@10.0.0.2/crm",
            }
        )
    with pytest.raises(ValueError, match="entry 2 is not a postgresql") as refused:
        Settings.load(
            {
                "FINCRM_DATA_DIR": str(tmp_path),
                "FINCRM_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1/crm",
                "FINCRM_DATABASE_REPLICA_URLS": "postgresql+psycopg://a@10.0.0.2/crm, mysql://root:secret@10.0.0.3/crm",
            }
        )
    assert "secret" not in str(refused.value)  # the message never repeats a URL's password


def test_other_users_read_the_replica_and_a_writer_reads_its_own_write(routed: Any, cluster: Cluster, paused: Node) -> None:
    client = routed.test_client()
    login = Logins(client, routed.fincrm_test_logins)
    rm1, admin = login("rm1"), login("admin")
    seen_before = all_ids(client, admin)
    on_replica = replica_reads(routed)

    cid = new_customer(client, rm1, "复制一号")  # on the primary; the replica does not replay it

    # the writer sees its write at once: its reads go to the primary until a replica has it
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).status_code == 200
    assert cid in all_ids(client, rm1)
    # everyone else reads the replica, which does not show the new customer yet
    assert all_ids(client, admin) == seen_before
    assert client.get(f"{CUSTOMERS}/{cid}", headers=admin).status_code == 404
    assert replica_reads(routed) >= on_replica + 2
    assert cluster.lag_bytes(paused) > 0

    # another worker process knows the writer's write position too (kept on the primary)
    other = make_app(Path(routed.config["FINCRM_SETTINGS"].data_dir), cluster.primary.url, [paused.url], FINCRM_REPLICA_MAX_LAG="600")
    try:
        other_client = other.test_client()
        assert other_client.get(f"{CUSTOMERS}/{cid}", headers=rm1).status_code == 200
        # … and a worker started after the write does not trust a replica that trails its start
        assert other_client.get(f"{CUSTOMERS}/{cid}", headers=admin).status_code == 200
    finally:
        dispose(other)

    paused.sql("SELECT pg_wal_replay_resume()")
    cluster.wait_caught_up(paused)
    assert client.get(f"{CUSTOMERS}/{cid}", headers=admin).status_code == 200  # the replica caught up
    on_replica = replica_reads(routed)
    export = client.get("/api/v1/export/customer?format=csv", headers=admin)
    assert export.status_code == 200 and f"\n{cid},复***," in export.get_data(as_text=True)  # masked, as always
    assert replica_reads(routed) == on_replica + 1  # a streamed export reads the replica too
    scrape = client.get("/metrics").get_data(as_text=True)
    assert re.search(r'^fincrm_db_read_routes_total\{target="replica1"\} [1-9]', scrape, re.M), scrape[:2000]
    assert re.search(r'^fincrm_db_read_routes_total\{target="primary"\} [1-9]', scrape, re.M)
    assert client.get("/api/v1/audit/verify", headers=admin).json["ok"] is True


def test_a_field_added_in_one_worker_is_usable_in_another_while_the_replica_lags(routed: Any, cluster: Cluster, paused: Node) -> None:
    client = routed.test_client()
    login = Logins(client, routed.fincrm_test_logins)
    admin, rm2 = login("admin"), login("rm2")
    other = make_app(Path(routed.config["FINCRM_SETTINGS"].data_dir), cluster.primary.url, [paused.url], FINCRM_REPLICA_MAX_LAG="600")
    try:
        other_client = other.test_client()
        assert other_client.get(CUSTOMERS, headers=rm2).status_code == 200  # this worker is warm
        field = f"rep_note_{int(time.time() * 1000) % 100000}"
        resp = client.post("/api/v1/meta/entities/customer/fields", json={"name": field, "type": "string", "label": LABEL}, headers=admin)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        # the other worker's next request filters on the new field although the replica has not
        # replayed it: the stamps read on the primary say its metadata moved, so it reloads and
        # reads the primary
        flt = json.dumps({"field": field, "op": "eq", "value": "x"})
        resp = other_client.get(f"{CUSTOMERS}?filter={flt}", headers=rm2)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.json["items"] == []
    finally:
        dispose(other)


def test_reads_go_on_when_a_replica_is_down(routed: Any, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.runtime

    monkeypatch.setattr(engine.runtime, "_DOWN_SECONDS", 0.5)
    replica = cluster.replicas[0]
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    app = make_app(tmp_path / "data", cluster.primary.url, [dead, replica.url], FINCRM_REPLICA_MAX_LAG="600")
    try:
        client = app.test_client()
        admin = Logins(client)("admin")
        expected = all_ids(client, admin)
        assert expected  # earlier tests left customers
        # a replica that is not there at all is skipped; the other one answers
        for _ in range(4):
            assert all_ids(client, admin) == expected
        state = {r["name"].rsplit(":", 1)[-1]: r for r in routes(app)["replicas"]}
        assert state[dead.rsplit(":", 1)[-1]]["reads"] == 0 and state[dead.rsplit(":", 1)[-1]]["failures"] >= 1
        assert replica_reads(app) >= 4

        # the working replica goes down between two requests: reads fall back to the primary
        replica.stop("fast")
        try:
            for _ in range(3):
                assert all_ids(client, admin) == expected
        finally:
            replica.start()
        assert sum(r["failures"] for r in routes(app)["replicas"]) >= 2
        cluster.wait_caught_up(replica)
        time.sleep(0.6)
        # … and take the replica again once it is back
        used = replica_reads(app)
        assert all_ids(client, admin) == expected
        assert replica_reads(app) == used + 1
    finally:
        dispose(app)


def test_failover_to_the_promoted_replica_loses_no_replicated_write(tmp_path: Path) -> None:
    cluster = start_primary()
    try:
        replica = cluster.add_replica("standby1")
        app = make_app(tmp_path / "data", cluster.primary.url, [replica.url])
        client = app.test_client()
        login = Logins(client)
        rm1, admin = login("rm1"), login("admin")

        # asynchronous replication: acknowledged writes, then the primary reports them replayed
        acknowledged = [new_customer(client, rm1, f"异步{i}") for i in range(40)]
        first = acknowledged[0]
        patched = client.patch(f"{CUSTOMERS}/{first}", json={"aum": "2000", "version": 1}, headers=rm1)
        assert patched.status_code == 200, patched.get_data(as_text=True)
        waited = cluster.wait_caught_up(replica)

        # synchronous replication: every commit waits for the standby to have the WAL, so the
        # writes acknowledged next survive losing the primary without waiting for anything
        cluster.primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        cluster.primary.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while cluster.primary.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'") != [("sync",)]:
            assert time.monotonic() < deadline, "the standby never became synchronous"
            time.sleep(0.05)
        acknowledged += [new_customer(client, rm1, f"同步{i}") for i in range(20)]
        assert cluster.primary.sql("SELECT count(*) FROM pg_stat_replication")[0][0] == 1

        # lose the primary (no checkpoint, no clean shutdown), promote the standby, repoint the app
        started = time.monotonic()
        cluster.primary.stop("immediate")
        dispose(app)
        replica.promote()
        promoted_at = time.monotonic()
        after = make_app(tmp_path / "data", replica.url)
        client = after.test_client()
        login = Logins(client)
        admin = login("admin")  # login works: users came over with the data
        new_customer(client, admin, "切换后第一笔")
        recovered = time.monotonic() - started

        present = all_ids(client, admin)
        lost = [cid for cid in acknowledged if cid not in present]
        assert lost == []
        # rm1's token from before the failover still works (same secret; users and session
        # epochs came over with the data)
        record = client.get(f"{CUSTOMERS}/{first}", headers=rm1)
        assert record.status_code == 200 and record.json["aum"] == "2000.00" and record.json["version"] == 2
        assert client.patch(f"{CUSTOMERS}/{first}", json={"aum": "3000", "version": 2}, headers=rm1).status_code == 200
        verify = client.get("/api/v1/audit/verify", headers=admin).json
        assert verify["ok"] is True and verify["checked"] > len(acknowledged)
        print(
            f"\nfailover: {len(acknowledged)} acknowledged writes (40 async + 20 sync), lost {len(lost)}; "
            f"replay caught up {waited * 1000:.0f} ms after the last async write; "
            f"promotion {promoted_at - started:.2f} s after the primary stopped; "
            f"first write on the promoted replica {recovered:.2f} s after the primary stopped (includes starting the app)"
        )
        dispose(after)
    finally:
        cluster.close()
