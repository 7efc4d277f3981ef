"""The weights manifest: what each model file is, where it came from, and a checksum the app verifies.

`manifest.json` sits beside the model files. `files` maps each file name to its size in bytes and sha256;
everything else (architecture, training data, versions, metrics, parity figures) is free-form metadata written
by the export. The app calls `verify_model` before loading, so a truncated download or an edited file is
refused with one clear line instead of producing wrong labels. An optional `postprocess` table holds the
settings chosen for these weights by `python -m app tune` (flipped views, scale fusion, thresholds), and in its
`classes` sub-table the thresholds of any kind of image tuned apart (`IMAGE_CLASSES`); `predict` uses them
unless the command line sets the same options.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from app.config import CLASS_FIELDS, CONTRACT, IMAGE_CLASSES, MANIFEST_FIELDS, InferenceConfig
from app.errors import ModelError
from app.writer import write_text

MANIFEST_VERSION = 1
POSTPROCESS_NOTE = "tuned_on"  # free text beside the tuned values: which images, which F1
CLASSES_KEY = "classes"  # per kind of image: {"stained": {"cell_threshold": 0.2, ...}, ...}
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks (model files can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path | str) -> dict[str, Any]:
    """Manifest entry of one file: its size and sha256."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(
    directory: Path | str,
    entries: Mapping[str, Mapping[str, Any]] | list[str],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `directory/manifest.json` and return its path.

    `entries` is either a list of file names inside `directory` (size and sha256 are computed here) or a
    mapping of file name to an entry that already holds them (extra keys are kept). `meta` is stored as is.
    The file is written to a temporary name and renamed, so a reader never sees half a manifest.
    """
    directory = Path(directory)
    files: dict[str, dict[str, Any]] = {}
    items = {name: {} for name in entries} if isinstance(entries, list) else entries
    for name, given in items.items():
        entry = dict(given)
        if "size" not in entry or "sha256" not in entry:
            entry.update(file_entry(directory / name))
        files[name] = entry
    data = {"manifest_version": MANIFEST_VERSION, **dict(meta or {}), "files": files}
    return write_text(directory / CONTRACT.manifest_file, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_manifest(path: Path | str) -> dict[str, Any]:
    """Parse a manifest.json; a damaged one is a ModelError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path.name}: cannot read weights manifest ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ModelError(f"{path.name}: weights manifest has no 'files' table")
    return data


def listed_files(directory: Path | str) -> set[str]:
    """Names in the `files` table of the manifest in `directory` (empty when there is no manifest)."""
    path = Path(directory) / CONTRACT.manifest_file
    return set(read_manifest(path)["files"]) if path.is_file() else set()


def verify_model(path: Path | str) -> dict[str, Any] | None:
    """Check a model file against the manifest beside it and return its entry (None when no manifest exists).

    Raises ModelError when the file is not listed, or its size or sha256 differ from the manifest.
    """
    path = Path(path)
    manifest_path = path.parent / CONTRACT.manifest_file
    if not manifest_path.is_file():
        return None
    manifest = read_manifest(manifest_path)
    entry = manifest["files"].get(path.name)
    if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
        raise ModelError(f"{path.name}: not listed in {manifest_path.name}; refusing an unknown model file")
    if not path.is_file():
        raise ModelError(f"{path.name}: model file is missing")
    size = path.stat().st_size
    if size != entry["size"]:
        kind = "truncated" if size < entry["size"] else "changed"
        raise ModelError(
            f"{path.name}: {kind} model file ({size} bytes, manifest says {entry['size']}); re-download or re-export it"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ModelError(
            f"{path.name}: model file changed (sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}...); "
            "re-download or re-export it"
        )
    return dict(entry)


def manifest_beside(model: Path | str) -> Path:
    """The manifest of a weights folder, or of the folder holding a model file."""
    model = Path(model)
    return (model if model.is_dir() else model.parent) / CONTRACT.manifest_file


def postprocess_settings(model: Path | str) -> dict[str, Any]:
    """The `postprocess` table of the model's manifest ({} when there is no manifest or no table).

    A table with unknown fields, values of the wrong type or values the app does not accept is a ModelError:
    silently ignoring it would run the model with settings it was not tuned for.
    """
    path = manifest_beside(model)
    if not path.is_file():
        return {}
    table = read_manifest(path).get("postprocess")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ModelError(f"{path.name}: 'postprocess' must be a table of {', '.join(MANIFEST_FIELDS)}")
    settings: dict[str, Any] = {}
    for name, value in table.items():
        if name in (POSTPROCESS_NOTE, CLASSES_KEY):
            continue
        if name not in MANIFEST_FIELDS:
            raise ModelError(f"{path.name}: unknown field postprocess.{name} (known: {', '.join(MANIFEST_FIELDS)})")
        settings[name] = _typed(path.name, name, value, type(getattr(InferenceConfig, name)))
    try:
        InferenceConfig(**settings)
    except ValueError as exc:
        raise ModelError(f"{path.name}: postprocess table: {exc}") from exc
    return settings


def class_settings(model: Path | str) -> dict[str, dict[str, Any]]:
    """The `postprocess.classes` table of the model's manifest: thresholds per kind of image ({} when none).

    Unknown kinds, fields outside `CLASS_FIELDS` and values the app does not accept are a ModelError."""
    path = manifest_beside(model)
    if not path.is_file():
        return {}
    table = read_manifest(path).get("postprocess") or {}
    classes = table.get(CLASSES_KEY, {}) if isinstance(table, dict) else {}
    if not isinstance(classes, dict):
        raise ModelError(f"{path.name}: postprocess.{CLASSES_KEY} must be a table of {', '.join(IMAGE_CLASSES)}")
    result: dict[str, dict[str, Any]] = {}
    for kind, fields in classes.items():
        if kind not in IMAGE_CLASSES or not isinstance(fields, dict):
            raise ModelError(f"{path.name}: postprocess.{CLASSES_KEY}.{kind} is not a table of a known kind of image"
                             f" ({', '.join(IMAGE_CLASSES)})")
        unknown = sorted(set(fields) - set(CLASS_FIELDS))
        if unknown:
            raise ModelError(f"{path.name}: postprocess.{CLASSES_KEY}.{kind} cannot set {', '.join(unknown)} "
                             f"(only {', '.join(CLASS_FIELDS)})")
        result[kind] = {name: _typed(path.name, f"{CLASSES_KEY}.{kind}.{name}", value,
                                     type(getattr(InferenceConfig, name))) for name, value in fields.items()}
        try:
            InferenceConfig(**result[kind])
        except ValueError as exc:
            raise ModelError(f"{path.name}: postprocess.{CLASSES_KEY}.{kind}: {exc}") from exc
    return result


def _typed(manifest: str, name: str, value: Any, kind: type) -> Any:
    """A manifest value as the config field's type (str, int or float), or a ModelError naming the field."""
    if kind is str:
        if not isinstance(value, str):
            raise ModelError(f"{manifest}: postprocess.{name} must be text, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{manifest}: postprocess.{name} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ModelError(f"{manifest}: postprocess.{name} must be a whole number, got {value!r}")
    return kind(value)


def store_postprocess(
    directory: Path | str, settings: Mapping[str, Any], note: str,
    classes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write `settings` (post-processing fields only), the thresholds of any kinds of image tuned apart
    (`classes`) and a `tuned_on` note into an existing manifest."""
    path = Path(directory) / CONTRACT.manifest_file
    manifest = read_manifest(path)
    unknown = set(settings) - set(MANIFEST_FIELDS)
    for kind, fields in (classes or {}).items():
        unknown |= {f"{kind}.{name}" for name in set(fields) - set(CLASS_FIELDS)}
        if kind not in IMAGE_CLASSES:
            unknown.add(kind)
    if unknown:
        raise ValueError(f"not post-processing fields: {sorted(unknown)}")
    meta = {k: v for k, v in manifest.items() if k not in ("manifest_version", "files")}
    chosen: dict[str, Any] = {name: settings[name] for name in MANIFEST_FIELDS if name in settings}
    if classes:
        chosen[CLASSES_KEY] = {kind: dict(fields) for kind, fields in classes.items()}
    meta["postprocess"] = {**chosen, POSTPROCESS_NOTE: note}
    return write_manifest(directory, manifest["files"], meta)


__all__ = [
    "class_settings", "file_entry", "listed_files", "manifest_beside", "postprocess_settings", "read_manifest",
    "sha256_file",
    "store_postprocess", "verify_model", "write_manifest",
]
