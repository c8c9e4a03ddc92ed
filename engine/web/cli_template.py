"""``fincrm template list|publish|history|rollback|export``: template packages from the console
(:class:`engine.services.packages.PackageService`, acting as ``system:cli``; every change audited).

``publish NAME`` publishes the shipped vertical (``metadata/verticals/NAME``), or ``--file`` a
package JSON (e.g. one exported from a test system). ``--dry-run`` prints the plan and changes
nothing. A refused package prints every error with its JSON pointer and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import click
from flask.cli import with_appcontext

from ..errors import FinCRMError
from ..security.principal import Principal
from .context import ensure_fab_role, services

__all__ = ["add_commands", "plan_lines"]

ACTOR = Principal.system("cli")


def add_commands(group: click.Group) -> None:
    group.add_command(template)


def _fail(exc: FinCRMError) -> None:
    click.echo(f"refused: {exc.message}", err=True)
    for d in exc.details[:200]:
        click.echo(f"  {d.get('pointer') or d.get('field') or ''}: {d.get('message')}", err=True)
    sys.exit(1)


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """A publish plan as lines a person reads."""
    if plan["noop"]:
        return [f"{plan['package']} {plan['version']} is already published: nothing to do"]
    ch = plan["changes"]
    lines = []
    ents = ch.get("entities", {})
    if ents.get("added"):
        lines.append("new entities: " + ", ".join(ents["added"]))
    for name, entry in ents.get("changed", {}).items():
        parts = [f"{k.replace('_', ' ')} {', '.join(v)}" for k, v in entry.items() if isinstance(v, list)]
        lines.append(f"entity {name}: " + ("; ".join(parts) or "layout"))
    if ents.get("removed"):
        lines.append("entities no longer declared (tables and data kept): " + ", ".join(ents["removed"]))
    for kind in ("roles", "flows", "triggers", "reports"):
        part = ch.get(kind, {})
        for verb in ("added", "changed", "removed"):
            if part.get(verb):
                lines.append(f"{kind} {verb}: " + ", ".join(part[verb]))
    for entity, n in (ch.get("seeds") or {}).items():
        lines.append(f"seed records: {n} new {entity}")
    steps = plan.get("migration", [])
    lines.append(f"schema steps: {len(steps)}")
    lines += [f"  {s['op']} {s['table']}.{s['name']} {s['detail']}".rstrip() for s in steps]
    return lines


@click.group("template")
def template() -> None:
    """Vertical templates and other metadata packages."""


@template.command("list")
@with_appcontext
def list_command() -> None:
    """Shipped and stored packages, with the published version."""
    for p in services().packages.list(ACTOR):
        label = (p.get("label") or {}).get("zh", "")
        shipped = f"shipped {p['shipped_version']}" if p.get("shipped_version") else "uploaded"
        click.echo(f"{p['name']:<16} {label:<10} {shipped:<16} published: {p.get('active_version') or '-'}")


@template.command("publish")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="show the plan, change nothing")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=True), help="a package JSON file or directory instead of the shipped one")
@click.option("--version", "version", help="publish this stored version (e.g. to go forward again after a rollback)")
@with_appcontext
def publish_command(name: str, dry_run: bool, file: str | None, version: str | None) -> None:
    """Publish package NAME (the shipped vertical bank, securities or insurance by default)."""
    from ..meta.packages import load_package_dir

    svc = services()
    try:
        doc = None
        if file:
            path = Path(file)
            doc = load_package_dir(path) if path.is_dir() else json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        plan = svc.packages.publish(ACTOR, name, dry_run=dry_run, version=version, doc=doc)
        seconds = time.perf_counter() - started
    except FinCRMError as exc:
        _fail(exc)
        return
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{file} is not a UTF-8 JSON package: {exc}") from exc
    for line in plan_lines(plan):
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing was changed")
    elif not plan["noop"]:
        for role in svc.roles.documents():
            ensure_fab_role(role["name"])
        click.echo(f"published {plan['package']} {plan['version']} in {seconds:.2f} s")


@template.command("history")
@click.argument("name")
@with_appcontext
def history_command(name: str) -> None:
    """Every stored version of NAME."""
    try:
        rows = services().packages.history(ACTOR, name)
    except FinCRMError as exc:
        _fail(exc)
        return
    for r in rows:
        mark = "*" if r["active"] else " "
        click.echo(f"{mark} {r['seq']:>3} {r['version']:<10} {r['digest'][:12]} uploaded {r['uploaded_at']} by {r['uploaded_by']}"
                   + (f", published {r['published_at']} by {r['published_by']}" if r["published_at"] else ""))


@template.command("rollback")
@click.argument("name")
@with_appcontext
def rollback_command(name: str) -> None:
    """Go back to the previously published version of NAME (metadata only: data is kept)."""
    try:
        plan = services().packages.rollback(ACTOR, name)
    except FinCRMError as exc:
        _fail(exc)
        return
    for line in plan_lines(plan):
        click.echo(line)
    click.echo(f"rolled back {name} from {plan['rolled_back_from']} to {plan['version'] or 'unpublished'}")


@template.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write to this file (default: stdout)")
@click.option("--version", "version", help="version of the exported package (default: the next patch version)")
@with_appcontext
def export_command(name: str, output: str | None, version: str | None) -> None:
    """The current customisation as package NAME, to publish on another system."""
    try:
        doc = services().packages.export(ACTOR, name, version)
    except FinCRMError as exc:
        _fail(exc)
        return
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {name} {doc['version']} ({len(doc['documents'])} documents) to {output}")
    else:
        click.echo(text, nl=False)
