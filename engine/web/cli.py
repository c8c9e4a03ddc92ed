"""The ``fincrm`` console script (click, through Flask's CLI).

``fincrm demo`` builds a ready-to-try installation (SQLite in the data dir, demo staff, synthetic
customers) and serves it; ``fincrm run`` serves under gunicorn; ``fincrm init`` creates or
upgrades the schema; ``fincrm user create`` adds staff; ``fincrm jobs run`` runs one pass of the
background jobs and ``fincrm worker`` runs them every interval (APScheduler, or Celery when
``FINCRM_BROKER_URL`` is set).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

__all__ = ["main", "register_cli", "DEMO_STAFF"]

# username, role, branch code, display name (DESIGN §3)
DEMO_STAFF = (
    ("admin", "admin", "HO", "系统管理员"),
    ("sup1", "supervisor", "BJ", "张主管"),
    ("rm1", "relationship_manager", "BJ01", "李客户经理"),
    ("rm2", "relationship_manager", "SH01", "王客户经理"),
    ("ops1", "operations", "HO", "赵运营"),
    ("risk1", "risk_control", "HO", "钱风控"),
    ("auditor1", "auditor", "HO", "孙审计"),
)


def _create_app() -> Flask:
    from app import create_app

    return create_app()


def _ensure_user(app: Flask, username: str, role: str, password: str, name: str) -> Any:
    from engine.web.security import password_policy
    from flask_appbuilder.exceptions import PasswordComplexityValidationError

    sm = app.appbuilder.sm  # type: ignore[attr-defined]
    user = sm.find_user(username=username)
    if user is not None:
        return user
    try:
        password_policy(password)
    except PasswordComplexityValidationError as exc:
        raise click.ClickException(str(exc)) from exc
    role_obj = sm.find_role(role) or sm.add_role(role)
    first, last = name[:1], name[1:] or name
    user = sm.add_user(username, first, last, f"{username}@demo.fincrm.local", [role_obj], password=password)
    if not user:
        raise click.ClickException(f"could not create user {username}")
    return user


def seed_demo_data(app: Flask, customers: int, password: str) -> None:
    from engine.demo import seed_branches, seed_channel_costs, seed_demo, seed_knowledge_base
    from engine.runtime import POLICY_VERSION
    from engine.security.org import set_staff
    from engine.security.principal import Principal

    svc = app.extensions["fincrm"]
    with app.app_context():
        users = {u: _ensure_user(app, u, r, password, n) for u, r, _, n in DEMO_STAFF}
        existing = svc.records.list(Principal.system("demo"), "customer", limit=1).items
        if existing:
            click.echo("demo data already present; not seeding again")
            return
        branches = seed_branches(svc.records)
        with svc.runtime.begin() as conn:
            for username, role, branch_code, _ in DEMO_STAFF:
                set_staff(
                    conn,
                    users[username].id,
                    branch_id=branches[branch_code],
                    team="wealth" if username in ("sup1", "rm1", "rm2") else None,
                    supervisor_id=users["sup1"].id if role == "relationship_manager" else None,
                )
            svc.runtime.bump(conn, POLICY_VERSION)
        owners = [(users[u].id, b) for u, r, b, _ in DEMO_STAFF if r == "relationship_manager"]
        with click.progressbar(length=customers, label=f"生成演示数据 / seeding {customers} customers") as bar:
            counts = seed_demo(svc.records, branches=branches, owners=owners, customers=customers, progress=bar.update)
        counts["knowledge_article"] = seed_knowledge_base(svc.records, users["admin"].id)
        counts["channel_cost"] = seed_channel_costs(svc.records)
        click.echo("created: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


TEMPLATE_CHOICES = ("all", "none", "bank", "securities", "insurance")
# the vertical roles the demo staff also get once a template is published (their core role stays):
# relationship managers act as private banker, investment advisor and insurance agent for their
# own customers; the supervisor leads the advisers; operations and risk take the back-office roles
DEMO_VERTICAL_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "bank": {"rm1": ("private_banker",), "rm2": ("private_banker",), "risk1": ("credit_officer",)},
    "securities": {
        "rm1": ("investment_advisor",), "rm2": ("investment_advisor",), "sup1": ("advisory_supervisor",),
        "ops1": ("securities_operations",), "risk1": ("compliance_officer",),
    },
    "insurance": {"rm1": ("insurance_agent",), "rm2": ("insurance_agent",), "ops1": ("claims_handler",), "risk1": ("insurance_compliance",)},
}


def demo_templates(choice: str) -> tuple[str, ...]:
    from engine.verticals import VERTICALS

    return VERTICALS if choice == "all" else () if choice == "none" else (choice,)


def publish_demo_templates(app: Flask, names: tuple[str, ...], customers: int) -> None:
    """Publish the vertical templates (a no-op for those already published) and, the first time
    each is published here, seed its demo data on top of the core demo."""
    from sqlalchemy import select

    from engine.runtime import POLICY_VERSION
    from engine.security.principal import Principal
    from engine.verticals import DemoContext, seeder
    from engine.web.context import ensure_fab_role

    svc = app.extensions["fincrm"]
    system = Principal.system("demo")
    with app.app_context():
        sm = app.appbuilder.sm  # type: ignore[attr-defined]
        users = {u: sm.find_user(username=u).id for u, *_ in DEMO_STAFF if sm.find_user(username=u) is not None}
        branch = svc.runtime.cached_snapshot().tables["branch"]
        with svc.runtime.engine.connect() as conn:
            branches = {r.code: r.id for r in conn.execute(select(branch.c.code, branch.c.id))}
        owners = [(users[u], b) for u, r, b, _ in DEMO_STAFF if r == "relationship_manager" and u in users]
        for name in names:
            first_time = not any(h["published_at"] for h in svc.packages.history(system, name))
            plan = svc.packages.publish(system, name)
            for role in svc.roles.documents():
                ensure_fab_role(role["name"])
            click.echo(f"模板 / template {name} {plan['version']}: " + ("already published" if plan["noop"] else "published"))
            for username, extra in DEMO_VERTICAL_ROLES.get(name, {}).items():
                user = sm.find_user(username=username)
                wanted = [sm.find_role(r) for r in extra]
                if user is not None and any(r is not None and r not in user.roles for r in wanted):
                    user.roles.extend(r for r in wanted if r is not None and r not in user.roles)
                    sm.update_user(user)
            with svc.runtime.begin() as conn:
                svc.runtime.bump(conn, POLICY_VERSION)  # cached principals pick up their new roles
            if first_time:
                ctx = DemoContext(records=svc.records, owners=owners, branches=branches, users=users, scale=max(customers, 1) / 2000)
                counts = seeder(name)(ctx)
                click.echo(f"  {name} demo data: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False, add_version_option=False)
def main() -> None:
    """FinCRM — metadata-driven CRM for banks, securities firms and insurers."""


@main.command("demo", context_settings={"ignore_unknown_options": False})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--data-dir", default="fincrm-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--customers", default=2000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--template", "template", type=click.Choice(TEMPLATE_CHOICES), default="all", show_default=True,
              help="vertical templates to publish, with their demo data")
@click.option("--no-serve", is_flag=True, help="seed the data and exit")
def demo(host: str, port: int, data_dir: str, customers: int, template: str, no_serve: bool) -> None:
    """Build the demo (SQLite in DATA_DIR, demo staff, synthetic data, vertical templates) and serve it."""
    from app import create_app

    os.environ["FINCRM_DATA_DIR"] = str(Path(data_dir).resolve())
    os.environ.pop("FINCRM_DATABASE_URL", None)
    password = os.environ.get("FINCRM_DEMO_PASSWORD")
    generated = not password
    if not password:
        password = secrets.token_urlsafe(12) + "-Aa1"  # meets the password policy
    app = create_app({"FINCRM_DATA_DIR": str(Path(data_dir).resolve())})
    seed_demo_data(app, customers, password)
    publish_demo_templates(app, demo_templates(template), customers)
    click.echo("")
    click.echo(f"FinCRM demo: http://{host}:{port}/  (API: http://{host}:{port}/api/v1/openapi.json)")
    click.echo("staff: " + ", ".join(u for u, *_ in DEMO_STAFF))
    if generated:
        click.echo(f"password for every demo account (set FINCRM_DEMO_PASSWORD to choose): {password}")
    if not no_serve:
        from werkzeug.serving import run_simple

        from engine.flows.jobs import default_worker, job_interval, make_scheduler, run_pass

        # the embedded default: the jobs pass (triggers, SLA escalation, notifications) runs
        # in this process on APScheduler, now and every FINCRM_JOBS_INTERVAL seconds
        svc = app.extensions["fincrm"]
        seconds = job_interval()
        scheduler = make_scheduler(lambda: run_pass(svc.runtime, svc.records, worker=default_worker()), seconds, blocking=False)
        scheduler.start()
        click.echo(f"jobs: a pass now and every {seconds:g}s in this process (APScheduler)")
        try:
            # Flask refuses app.run() inside its own CLI; serve with Werkzeug directly (threaded)
            run_simple(host, port, app, threaded=True, use_reloader=False)
        finally:
            scheduler.shutdown(wait=False)


@main.command("init")
@click.option("--admin-password", envvar="FINCRM_ADMIN_PASSWORD", default=None, help="create user 'admin' with this password")
@with_appcontext
def init(admin_password: str | None) -> None:
    """Create or upgrade the database schema (additive only) and the core roles."""
    steps = current_app.extensions["fincrm"].runtime.init_schema()
    click.echo(f"schema up to date ({len(steps)} steps applied)")
    if admin_password:
        _ensure_user(current_app, "admin", "admin", admin_password, "系统管理员")
        click.echo("admin user ready")


@main.group("user")
def user() -> None:
    """Manage staff accounts."""


@user.command("create")
@click.option("--username", required=True)
@click.option("--role", required=True)
@click.option("--name", default=None)
@click.password_option()
@with_appcontext
def user_create(username: str, role: str, name: str | None, password: str) -> None:
    """Create a staff account with one role."""
    _ensure_user(current_app, username, role, password, name or username)
    click.echo(f"user {username} ({role}) ready")


@main.group("audit")
def audit_group() -> None:
    """The audit trail."""


@audit_group.command("verify")
@with_appcontext
def audit_verify() -> None:
    """Walk the hash chain; exit 1 and name the first bad entry if anything was changed."""
    from engine.security.audit import verify

    result = verify(current_app.extensions["fincrm"].runtime.engine)
    if result["ok"]:
        click.echo(f"audit chain OK ({result['checked']} entries)")
        return
    click.echo(f"audit chain BROKEN at entry {result['first_bad']}: {result['reason']} (checked {result['checked']})", err=True)
    sys.exit(1)


@main.group("keys")
def keys_group() -> None:
    """Encryption keys."""


@keys_group.command("rotate")
@click.option("--resume", is_flag=True, help="only re-encrypt what is still under an older key (no new key)")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
def keys_rotate(resume: bool, batch: int) -> None:
    """Make a new master key (key-file setups) and re-encrypt every value under it, resumably.

    With FINCRM_MASTER_KEY in the environment, put the new key there and the old one in
    FINCRM_PREVIOUS_MASTER_KEYS, then run this to re-encrypt. Interrupted runs continue with
    --resume (or simply by running again with the same keys)."""
    import base64
    import secrets as _secrets

    from app import create_app
    from engine.config import Settings
    from engine.security.crypto import key_id
    from engine.security.rotation import rotate_keys

    settings = Settings.load()
    if not resume and not os.environ.get("FINCRM_MASTER_KEY"):
        old = settings.key_file
        archived = old.with_name(f"{old.name}.old-{key_id(settings.master_key)}")
        old.rename(archived)
        fd = os.open(old, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(_secrets.token_bytes(32)).decode() + "\n")
        click.echo(f"new master key written to {old}; the old one kept as {archived.name} until re-encryption is done")
    app = create_app()
    runtime = app.extensions["fincrm"].runtime
    with click.progressbar(length=0, label="re-encrypting") as bar:
        done = rotate_keys(runtime, batch=batch, progress=lambda name, n: bar.update(n))
    with app.app_context():
        from engine.security import audit

        with runtime.begin() as conn:
            audit.append(conn, audit.AuditEntry(actor="system:cli", action="keys_rotate", detail={"key_id": runtime.keyring.current_id, "re_encrypted": done}))
    click.echo("re-encrypted: " + (", ".join(f"{k} {v}" for k, v in done.items()) or "nothing to do"))
    click.echo(f"current key id {runtime.keyring.current_id}; old key files can be removed once no backup needs them")


@main.group("jobs")
def jobs_group() -> None:
    """Background jobs: scheduled triggers, SLA escalation, notification delivery."""


def _resume_imports(app: Flask) -> list[dict[str, Any]]:
    from engine.web.imports_api import resume_interrupted

    resumed = resume_interrupted(app)
    for job in resumed:
        click.echo(f"import job {job['id']} resumed: {job['status']}, {job['counts']}")
    return resumed


def _web_jobs(app: Flask, report: dict[str, Any], now: Any = None) -> None:
    """The jobs that need the web layer (accounts, principals): interrupted imports resume,
    scheduled reports are made as their recipients and queued for delivery."""
    from engine.web.reports_api import deliver_scheduled_reports

    report["imports_resumed"] = _resume_imports(app)
    try:
        delivered = deliver_scheduled_reports(app, now)
    except Exception as exc:  # reported like any failed job; the pass has done the rest
        delivered = {"error": type(exc).__name__, "message": str(exc)[:300]}
        report["ok"] = False
        report["failed"] = [*report.get("failed", []), "scheduled_reports"]
    report["scheduled_reports"] = delivered
    if delivered.get("delivered"):
        click.echo(f"scheduled reports: {delivered['delivered']} delivered")


def _echo_pass(report: dict[str, Any]) -> None:
    """One line per job: status, time and the counts it reported."""
    for job in report["jobs"]:
        detail = job["detail"]
        if "error" in detail:
            said = f"{detail['error']}: {detail.get('message', '')}"
        else:
            said = ", ".join(f"{k} {v}" for k, v in detail.items() if isinstance(v, int) and not isinstance(v, bool)) or "nothing to do"
        click.echo(f"{job['job']}: {job['status']} in {job['seconds']}s ({said})", err=job["status"] != "ok")


@jobs_group.command("run")
@click.option("--now", default=None, help="run as of this moment, ISO 8601 (naive = Beijing time), e.g. 2026-01-01T09:00:00")
@click.option("--json", "as_json", is_flag=True, help="print the pass's full report as JSON")
@with_appcontext
def jobs_run(now: str | None, as_json: bool) -> None:
    """Run one pass of every job now; exit 1 if any job failed (each run is kept in fincrm_job_run)."""
    import json

    from engine.flows.jobs import default_worker, parse_moment, run_pass

    try:
        moment = parse_moment(now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--now") from None
    svc = current_app.extensions["fincrm"]
    report = run_pass(svc.runtime, svc.records, now=moment, worker=f"cli:{default_worker()}")
    _web_jobs(current_app._get_current_object(), report, moment)  # type: ignore[attr-defined]
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        _echo_pass(report)
    if not report["ok"]:
        sys.exit(1)


@main.command("worker")
@click.option("--interval", type=float, default=None, help="seconds between passes  [default: FINCRM_JOBS_INTERVAL or 300]")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True, help="Celery worker processes (with FINCRM_BROKER_URL)")
def worker(interval: float | None, concurrency: int) -> None:
    """Run the jobs pass every interval: in-process on APScheduler, or on Celery (worker with
    embedded beat) when FINCRM_BROKER_URL is set."""
    from engine.flows.jobs import job_interval

    try:
        seconds = job_interval(interval)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--interval") from None
    if os.environ.get("FINCRM_BROKER_URL"):
        _celery_worker(seconds, concurrency)
    else:
        _scheduler_worker(seconds)


def _scheduler_worker(seconds: float) -> None:
    import signal

    from engine.flows.jobs import default_worker, make_scheduler, run_pass

    app = _create_app()
    svc = app.extensions["fincrm"]
    name = f"worker:{default_worker()}"

    def one_pass() -> None:
        report = run_pass(svc.runtime, svc.records, worker=name)
        _web_jobs(app, report)
        click.echo(f"jobs pass {'ok' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])} at {report['now']}")
        _echo_pass(report)

    def _stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    scheduler = make_scheduler(one_pass, seconds)
    signal.signal(signal.SIGTERM, _stop)
    click.echo(f"FinCRM worker: a jobs pass now and every {seconds:g}s (APScheduler, in-process); Ctrl-C stops")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=True)  # let a running pass finish


def _celery_worker(seconds: float, concurrency: int) -> None:
    os.environ["FINCRM_JOBS_INTERVAL"] = str(seconds)  # read by the Celery app's beat schedule
    from engine.flows.celery_app import celery, queue_name

    data_dir = Path(os.environ.get("FINCRM_DATA_DIR", "fincrm-data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"FinCRM worker: Celery with embedded beat, a jobs pass every {seconds:g}s on queue {queue_name()!r}")
    celery.worker_main(
        [
            "worker",
            "--beat",
            f"--schedule={data_dir / 'celerybeat-schedule'}",
            f"--queues={queue_name()}",
            f"--concurrency={concurrency}",
            f"--hostname=fincrm-{os.getpid()}@%h",
            "--loglevel=INFO",
        ]
    )


from . import cli_backup, cli_import, cli_serve, cli_template  # noqa: E402  (their commands join ``main``)

cli_backup.add_commands(main)
cli_import.add_commands(main)
cli_serve.add_commands(main)  # serve, and run as its alias
cli_template.add_commands(main)


def register_cli(app: Flask) -> None:
    """Hook for `flask --app app …` users: the same commands on the app's own CLI."""
    for name in ("init", "user", "jobs", "import", "backup", "restore", "template"):
        if name not in app.cli.commands:
            app.cli.add_command(main.commands[name])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
