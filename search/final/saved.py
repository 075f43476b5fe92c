"""Saved models, and the manifest beside each that says whose it is.

A model file is named after its study, but study names repeat: every storage's first study of a
dataset takes the dataset's name, and each study of a preset enqueues the same networks first.
So a file's name carries the study's uid (a random id it gets when it is created, or at its
first retrain), and a manifest beside it (`NAME.keras.json`) records the storage, study, uid and
trial it came from, with its test figures. A saved model is reused only where its manifest
names this study and trial.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import first_line
from search.store.storage import masked, safe_name

if TYPE_CHECKING:
    import optuna

UID = "uid"  # the study's user attribute


def study_uid(study: optuna.Study) -> str:
    """The study's uid; a study made before uids existed gets one now."""
    uid = study.user_attrs.get(UID)
    if not isinstance(uid, str):
        uid = uuid.uuid4().hex
        study.set_user_attr(UID, uid)
    return uid


def model_path(out_dir: Path, study: optuna.Study, what: str) -> Path:
    """Where a model of this study is saved: models/STUDY-UID8-WHAT.keras under `out_dir`."""
    return (
        out_dir / "models" / f"{safe_name(study.study_name)}-{study_uid(study)[:8]}-{what}.keras"
    )


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def identity(study: optuna.Study, url: str | None, **figures: Any) -> dict[str, Any]:
    """What a manifest says: the storage (its URL without password), study, uid, and figures."""
    storage = masked(url) if url else None
    return {"storage": storage, "study": study.study_name, UID: study_uid(study), **figures}


def _atomic(path: Path, write: Any, suffix: str) -> None:
    """Write through a temporary file and rename it, so a failed write leaves nothing half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError:
        raise
    except Exception as e:  # h5py and zipfile report a full disk in their own exception types
        raise OSError(first_line(e, type(e).__name__)) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(model: Any, path: Path, manifest: dict[str, Any]) -> None:
    """The model, then its manifest: a model without one is never reused."""
    _atomic(path, lambda tmp: model.save(tmp), ".keras")
    _atomic(manifest_path(path), lambda tmp: Path(tmp).write_text(json.dumps(manifest)), ".json")


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def foreign(path: Path, study: optuna.Study, trial: int) -> str | None:
    """Why the model at `path` is not this study's trial `trial` (None: it is)."""
    manifest = read_manifest(path)
    if manifest is None:
        return "it has no manifest that says whose it is"
    if manifest.get(UID) != study_uid(study):
        where = manifest.get("storage") or "another storage"
        return f"it was saved for study '{manifest.get('study')}' in {where}, not this one"
    if manifest.get("trial") != trial:
        return f"it holds trial #{manifest.get('trial')}"
    return None
