"""Template packages as data: load a package directory, check it, fingerprint it, layer it.

A package (``kind: package``) is a named, versioned set of metadata documents published as one
unit — a vertical template (``metadata/verticals/<name>/``) or a customisation exported from a
test system. Pure functions only: the database side (upload, publish, rollback) is
:mod:`engine.services.packages`.

Layering (DESIGN §2: core → published packages → runtime changes):

- ``entity`` documents of a package add entities (or merge into one of the same name);
- ``entity_overlay`` documents change existing entities. Unlike a runtime overlay — which the
  layout editor writes whole — a package overlay *adds to* the tag sets, form sections,
  relations and data-quality rules it names (merged by name), so two verticals can each bring tag sets and related
  records (customer-360) for ``customer``. New fields
  of a package are real columns unless they say ``"storage": "json"`` (DESIGN §2: IT-published
  fields are columns);
- ``role``, ``flow``, ``trigger``, ``report`` documents replace those of the same name from the
  layers below (a vertical may refine the core ``loan_approval`` flow);
- ``seed`` documents are reference records (sales scripts, products) inserted at publish when no
  record has the same key, and never changed or deleted afterwards: they are data then.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import MetadataInvalid
from .registry import merge_entity
from .schema import METADATA_DIR, pointer, schema_errors

__all__ = [
    "VERTICALS_DIR",
    "DOCUMENT_KINDS",
    "load_package_dir",
    "shipped_packages",
    "package_errors",
    "check_package",
    "digest",
    "layer",
    "documents_of",
    "dependency_order",
]

VERTICALS_DIR = METADATA_DIR / "verticals"
DOCUMENT_KINDS = ("entity", "entity_overlay", "role", "flow", "trigger", "report", "seed")
_MERGED_BY_NAME = ("tag_sets", "sections", "relations", "rules")  # what a package overlay adds to instead of replacing
MAX_FILE_BYTES = 2_000_000


def load_package_dir(path: Path | str) -> dict[str, Any]:
    """The package in ``path``: ``package.json`` plus every other ``*.json`` file below it (one
    document each, in path order) appended to its ``documents``. Unreadable files are refused
    with every problem listed (the pointer names the file)."""
    root = Path(path)
    head = root / "package.json"
    errors: list[dict[str, str]] = []
    doc = _read_json(head, "package.json", errors)
    files = sorted(p for p in root.rglob("*.json") if p != head and p.is_file())
    documents: list[Any] = list(doc.get("documents", [])) if isinstance(doc, dict) else []
    for p in files:
        rel = p.relative_to(root).as_posix()
        item = _read_json(p, rel, errors)
        if item is not None:
            documents.append(item)
    if errors:
        raise MetadataInvalid(f"package {root.name!r} cannot be read", errors)
    if not isinstance(doc, dict):
        raise MetadataInvalid(f"package {root.name!r} cannot be read", [{"pointer": "/files/package.json", "message": "must be a JSON object"}])
    return {**doc, "documents": documents}


def _read_json(p: Path, rel: str, errors: list[dict[str, str]]) -> Any:
    where = "/files/" + rel.replace("~", "~0").replace("/", "~1")
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            errors.append({"pointer": where, "message": f"larger than {MAX_FILE_BYTES} bytes"})
            return None
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append({"pointer": where, "message": "missing"})
    except UnicodeDecodeError:
        errors.append({"pointer": where, "message": "is not UTF-8 text"})
    except json.JSONDecodeError as exc:
        errors.append({"pointer": where, "message": f"is not valid JSON (line {exc.lineno}, column {exc.colno})"})
    return None


def shipped_packages(directory: Path | None = None) -> dict[str, Path]:
    """The vertical templates shipped with FinCRM: name → directory."""
    directory = directory or VERTICALS_DIR
    if not directory.is_dir():
        return {}
    return {p.name: p for p in sorted(directory.iterdir()) if (p / "package.json").is_file()}


def package_errors(doc: Any) -> list[dict[str, str]]:
    """Every meta-schema error of the package and of each of its documents, with pointers into
    the package (``/documents/3/fields/0/type``), plus duplicate documents."""
    errors = schema_errors("package", doc)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("documents"), list):
        return errors
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(doc["documents"]):
        if not isinstance(item, Mapping) or item.get("kind") not in DOCUMENT_KINDS:
            continue  # the package schema has reported it
        errors += schema_errors(str(item["kind"]), item, ("documents", i))
        key = (str(item["kind"]), str(item.get("name")))
        if key in seen:
            errors.append({"pointer": pointer(("documents", i, "name")), "message": f"{key[0]} {key[1]!r} is already document {seen[key]}"})
        seen.setdefault(key, i)
    return errors


def check_package(doc: Any) -> dict[str, Any]:
    """The package, or MetadataInvalid listing every schema error (nothing else is looked at)."""
    errors = package_errors(doc)
    if errors:
        name = doc.get("name") if isinstance(doc, Mapping) else None
        raise MetadataInvalid(f"package {str(name)[:64]!r} is invalid" if name else "package is invalid", errors)
    return dict(doc)


def digest(doc: Mapping[str, Any]) -> str:
    """A fingerprint of the package's content (key order and whitespace do not matter)."""
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def documents_of(packages: Iterable[Mapping[str, Any]], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """The documents of these kinds, package by package, in order."""
    return [dict(d) for p in packages for d in p.get("documents", ()) if d.get("kind") in kinds]


def layer(base_entities: Sequence[Mapping[str, Any]], packages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The packages' entity documents and their overlays, ready for ``build_registry``: the
    overlays come back with ``tag_sets`` and ``sections`` already merged with what the layers
    below define, so that they add rather than replace."""
    running: dict[str, dict[str, Any]] = {}
    for d in base_entities:
        name = d["name"]
        running[name] = merge_entity(running[name], d) if name in running else copy.deepcopy(dict(d))
    entities: list[dict[str, Any]] = []
    overlays: list[dict[str, Any]] = []
    for pkg in packages:
        for d in pkg.get("documents", ()):
            if d.get("kind") == "entity":
                doc = copy.deepcopy(dict(d))
                entities.append(doc)
                running[doc["name"]] = merge_entity(running[doc["name"]], doc) if doc["name"] in running else copy.deepcopy(doc)
            elif d.get("kind") == "entity_overlay":
                ov = copy.deepcopy(dict(d))
                base = running.get(ov["name"])
                if base is not None:
                    for key in _MERGED_BY_NAME:
                        if key in ov:
                            ov[key] = _merge_by_name(base.get(key, []), ov[key])
                    running[ov["name"]] = merge_entity(base, ov)
                overlays.append(ov)
    return entities, overlays


def _merge_by_name(base: Sequence[Mapping[str, Any]], added: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = [copy.deepcopy(dict(x)) for x in base]
    index = {x.get("name"): i for i, x in enumerate(out)}
    for x in added:
        if x.get("name") in index:
            out[index[x.get("name")]] = copy.deepcopy(dict(x))
        else:
            index[x.get("name")] = len(out)
            out.append(copy.deepcopy(dict(x)))
    return out


def dependency_order(packages: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[dict[str, str]]]:
    """Packages sorted so that each comes after the ones it depends on (then by name), and the
    problems: a dependency that is not among them, or a cycle."""
    by_name = {p["name"]: p for p in packages}
    errors: list[dict[str, str]] = []
    out: list[Mapping[str, Any]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            errors.append({"pointer": f"/package/{name}/depends", "message": "dependency cycle: " + " → ".join((*chain, name))})
            return
        state[name] = 1
        for i, dep in enumerate(by_name[name].get("depends", ())):
            if dep not in by_name:
                errors.append({"pointer": f"/package/{name}/depends/{i}", "message": f"needs package {dep!r}, which is not published"})
            else:
                visit(dep, (*chain, name))
        state[name] = 2
        out.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return out, errors
