"""Small file helpers shared by the modules that write files: the record, the checkpoint state, the report, the CLI."""

from __future__ import annotations

import os
import tempfile


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` through a temporary file in the same folder, `fsync` and an atomic rename.

    A reader sees the whole file or the previous one, never half of it, also when the writer is killed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file readable by its owner only; give it the mode `open` would (0666 less the umask),
        # like the Trainer's own files.
        os.chmod(temporary, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def package_version(name: str = "hf_zpd") -> str:
    """The installed version of a package (`importlib.metadata`), or `"unknown"` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# Project-URL labels that point at the project itself, most specific first (PEP 753's well-known labels).
_HOME_LABELS = ("homepage", "repository", "source", "sourcecode", "github", "documentation", "docs")


def package_homepage(name: str = "hf_zpd") -> str | None:
    """The project's home page from the installed package's metadata (`[project.urls]` in pyproject.toml), or `None`
    when none is set: the one place to set the link the cards carry, so that no card links a page that is not there."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        entries = metadata(name).get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    urls = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls.setdefault(label.strip().lower().replace(" ", "").replace("-", "").replace("_", ""), url.strip())
    return next((urls[label] for label in _HOME_LABELS if urls.get(label)), None)
