"""The output directory: images, manifest, job record, summary and gallery.

The driver is the only writer. An image is written to a temp name and renamed, then
its manifest row is appended, so every manifest row points at a complete image and a
crash of the driver at any moment leaves at worst an unlisted image or a temp file,
both of which ``--resume`` cleans up. Files are flushed but not fsync'ed one by one (that
capped throughput at a few hundred images/s): after a power loss the OS may drop recent
writes, and ``--resume``'s sha256 check regenerates whatever did not survive.
Works on any fsspec filesystem; on local disks the manifest is appended, elsewhere it
is rewritten whole (object stores cannot append).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ray_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGES = "images"
MANIFEST = "manifest.jsonl"
JOB = "job.json"
SUMMARY = "summary.json"
GALLERY = "index.html"
TMP_MARK = ".tmp-"


def image_name(index: int, k: int, images_per_prompt: int, width: int) -> str:
    """``images/00042.png``, or ``images/00042-1.png`` when there are several images per prompt."""
    stem = f"{index:0{width}d}"
    return f"{IMAGES}/{stem}-{k}.png" if images_per_prompt > 1 else f"{IMAGES}/{stem}.png"


def index_width(num_items: int) -> int:
    return max(5, len(str(max(num_items - 1, 0))))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputDir:
    """One job's output location (local path or fsspec URL)."""

    def __init__(self, url: str):
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self.fs, self.root = url_to_fs(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._manifest_rows: list[dict[str, Any]] = []
        self._manifest_file: Any = None

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def display(self, rel: str) -> str:
        """Where a user finds ``rel``: an absolute local path or a full URL."""
        if self.is_local:
            return os.path.abspath(self.path(rel))
        return self.fs.unstrip_protocol(self.path(rel))

    def is_empty(self) -> bool:
        return not self.fs.exists(self.root) or not self.fs.ls(self.root, detail=False)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``rel`` so that readers see either nothing or the whole file."""
        final = self.path(rel)
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if self.is_local:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        else:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel))

    def remove_stale_temps(self) -> int:
        """Delete temp files a crashed run left behind; return how many."""
        removed = 0
        for folder in (self.root, self.path(IMAGES)):
            if not self.fs.exists(folder):
                continue
            for p in self.fs.ls(folder, detail=False):
                if TMP_MARK in posixpath.basename(p):
                    self.fs.rm(p)
                    removed += 1
        return removed

    # -- manifest -------------------------------------------------------------------
    def read_manifest(self) -> tuple[list[dict[str, Any]], int]:
        """Rows of the manifest and the number of unreadable lines (a torn last write)."""
        data = self.read(MANIFEST)
        if data is None:
            return [], 0
        rows, bad = [], 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and "file" in row and "sha256" in row:
                rows.append(row)
            else:
                bad += 1
        return rows, bad

    def start_manifest(self, rows: list[dict[str, Any]], rewrite: bool) -> None:
        """Begin appending after ``rows``; ``rewrite`` first replaces the file with exactly them."""
        self._manifest_rows = list(rows)
        if rewrite or not self.exists(MANIFEST):
            self.write_atomic(MANIFEST, b"".join(_row_bytes(r) for r in rows))
        if self.is_local:
            self._manifest_file = open(self.path(MANIFEST), "ab")

    def append_manifest(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self._manifest_rows.extend(rows)
        if self._manifest_file is not None:
            self._manifest_file.write(b"".join(_row_bytes(r) for r in rows))
            self._manifest_file.flush()
        else:
            self.write_atomic(MANIFEST, b"".join(_row_bytes(r) for r in self._manifest_rows))

    def close(self) -> None:
        if self._manifest_file is not None:
            os.fsync(self._manifest_file.fileno())
            self._manifest_file.close()
            self._manifest_file = None

    @property
    def manifest_rows(self) -> list[dict[str, Any]]:
        return list(self._manifest_rows)

    def write_json(self, rel: str, value: Any) -> None:
        self.write_atomic(rel, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        data = self.read(rel)
        return None if data is None else json.loads(data)


def _row_bytes(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode()


def prepare_output(
    out: OutputDir, resume: bool, fingerprint: str, fingerprint_inputs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Check the directory and return the verified finished images, keyed by file.

    Without ``resume`` the directory must be empty (or absent). With it, the job record
    must match ``fingerprint``; manifest rows whose file is missing or whose sha256
    differs are dropped (their images will be regenerated) and temp files removed.
    """
    if not resume:
        if not out.is_empty():
            raise ConfigError(
                f"output: {out.url} is not empty; pass --resume to continue that job, or choose a new --output"
            )
        out.fs.makedirs(out.path(IMAGES), exist_ok=True)
        out.write_json(JOB, {"fingerprint": fingerprint, "inputs": dict(fingerprint_inputs)})
        out.start_manifest([], rewrite=True)
        return {}

    record = out.read_json(JOB)
    if record is None:
        if not out.is_empty():
            raise ConfigError(f"output: {out.url} has no {JOB}; it was not written by a batch job, refusing to resume")
        out.fs.makedirs(out.path(IMAGES), exist_ok=True)
        out.write_json(JOB, {"fingerprint": fingerprint, "inputs": dict(fingerprint_inputs)})
        out.start_manifest([], rewrite=True)
        return {}
    if record.get("fingerprint") != fingerprint:
        old = record.get("inputs", {})
        changed = sorted(k for k in set(old) | set(fingerprint_inputs) if old.get(k) != fingerprint_inputs.get(k))
        raise ConfigError(
            f"resume: the job in {out.url} was run with a different configuration (changed: {', '.join(changed)}); "
            "rerun with the original settings or choose a new --output"
        )
    removed = out.remove_stale_temps()
    rows, torn = out.read_manifest()
    done: dict[str, dict[str, Any]] = {}
    for row in rows:
        data = out.read(row["file"])
        if data is not None and sha256(data) == row["sha256"]:
            done[row["file"]] = row
        else:
            logger.warning("resume: %s is missing or corrupt; it will be regenerated", row["file"])
    dropped = len(rows) - len(done)
    logger.info("resume: %d images verified, %d dropped, %d temp files removed", len(done), dropped, removed)
    out.fs.makedirs(out.path(IMAGES), exist_ok=True)
    out.start_manifest(list(done.values()), rewrite=bool(dropped or torn))
    return done


def write_gallery(out: OutputDir, rows: list[dict[str, Any]], title: str) -> str:
    """Write a self-contained ``index.html`` (inline CSS, relative image links); return its path."""
    figures = []
    for row in sorted(rows, key=lambda r: r["file"]):
        caption = f"#{row['index']} · seed {row['seed']}"
        hover = f"{row['prompt']} — seed {row['seed']}, {row['steps']} steps, guidance {row['guidance_scale']}"
        figures.append(
            f'<figure><a href="{html.escape(row["file"])}"><img src="{html.escape(row["file"])}" '
            f'alt="{html.escape(row["prompt"])}" title="{html.escape(hover)}" loading="lazy"></a>'
            f"<figcaption>{html.escape(caption)}<br><span>{html.escape(row['prompt'])}</span></figcaption></figure>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; background: #fff; padding: .5rem; border-radius: 6px; box-shadow: 0 1px 3px #0002; }}
img {{ width: 100%; image-rendering: pixelated; border-radius: 4px; }}
figcaption {{ font-size: .75rem; color: #333; overflow-wrap: anywhere; }}
figcaption span {{ color: #666; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(rows)} images</p>
<main>
{chr(10).join(figures)}
</main></body></html>
"""
    out.write_atomic(GALLERY, page.encode())
    return out.display(GALLERY)
