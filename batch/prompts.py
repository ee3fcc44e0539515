"""Read and validate a prompt file before any worker starts.

Formats: ``.txt`` (one prompt per line; blank lines and ``#`` comments skipped),
``.jsonl`` (objects with ``prompt`` and optional per-item overrides) and ``.csv``
(a header with a ``prompt`` column and the same optional columns). Any fsspec URL
works. Every problem raises ``InputFileError`` naming ``file:line``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ray_diffusion.errors import InputFileError, InvalidRequestError
from ray_diffusion.generation import GenerationRequest
from ray_diffusion.seeds import derive_seed

logger = logging.getLogger(__name__)

# Row keys a .jsonl object or .csv header may use, and the request field each sets.
ROW_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "height": "height",
    "width": "width",
}
ID_FIELD = "id"
INT_FIELDS = {"seed", "steps", "height", "width"}
FLOAT_FIELDS = {"guidance_scale"}
CLIP_MAX_TOKENS = 77


@dataclass(frozen=True)
class PromptItem:
    """One row of the prompt file, resolved into a request."""

    index: int
    """Global index of the item (its position among the file's prompts)."""
    line: int
    """Line of the source file it came from."""
    item_id: str | None
    """The row's own id, if it gave one."""
    request: GenerationRequest
    """The fully resolved request (seed always set; request_id = str(index))."""


@dataclass(frozen=True)
class PromptFile:
    source: str
    sha256: str
    items: list[PromptItem]


def _rows(source: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = PurePosixPath(source.split("?")[0]).suffix.lower()
    if suffix == ".txt":
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield n, {"prompt": line}
    elif suffix == ".jsonl":
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputFileError(source, n, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InputFileError(source, n, f"expected a JSON object with a 'prompt', got {type(row).__name__}")
            yield n, row
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if "prompt" not in header:
            raise InputFileError(source, 1, f"the header needs a 'prompt' column, got {header}")
        unknown = [h for h in header if h not in ROW_FIELDS and h != ID_FIELD]
        if unknown:
            raise InputFileError(source, 1, f"unknown column(s) {unknown}; allowed: {sorted([*ROW_FIELDS, ID_FIELD])}")
        for row in reader:
            if None in row:
                raise InputFileError(source, reader.line_num, f"more cells than header columns: {row[None]}")
            if not any((v or "").strip() for v in row.values()):
                continue
            yield reader.line_num, {k: v for k, v in row.items() if v is not None and v.strip() != ""}
    else:
        raise InputFileError(source, 0, f"unsupported prompt file type {suffix or '(none)'!r}: use .txt, .jsonl or .csv")


def _coerce(source: str, line: int, key: str, value: Any) -> Any:
    if isinstance(value, str) and key in INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            raise InputFileError(source, line, f"bad number in '{key}': {value!r} (expected an integer)") from None
    if isinstance(value, str) and key in FLOAT_FIELDS:
        try:
            return float(value)
        except ValueError:
            raise InputFileError(source, line, f"bad number in '{key}': {value!r}") from None
    return value


def parse_prompts(
    source: str, data: bytes, defaults: Mapping[str, Any], job_seed: int, images_per_prompt: int = 1
) -> PromptFile:
    """Parse ``data`` (the file's bytes) into resolved items; raise ``InputFileError`` on any bad row."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(source, 0, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    items: list[PromptItem] = []
    for line, row in _rows(source, text):
        unknown = [k for k in row if k not in ROW_FIELDS and k != ID_FIELD]
        if unknown:
            raise InputFileError(source, line, f"unknown field(s) {unknown}; allowed: {sorted([*ROW_FIELDS, ID_FIELD])}")
        if "prompt" not in row:
            raise InputFileError(source, line, "missing 'prompt'")
        index = len(items)
        fields = dict(defaults)
        for key, value in row.items():
            if key != ID_FIELD:
                fields[ROW_FIELDS[key]] = _coerce(source, line, key, value)
        if fields.get("seed") is None:
            fields["seed"] = derive_seed(job_seed, index)
        fields["num_images"] = images_per_prompt
        fields["request_id"] = str(index)
        try:
            request = GenerationRequest.parse(fields)
        except InvalidRequestError as exc:
            raise InputFileError(source, line, str(exc)) from None
        item_id = row.get(ID_FIELD)
        items.append(PromptItem(index=index, line=line, item_id=None if item_id is None else str(item_id), request=request))
    if not items:
        raise InputFileError(source, 0, "no prompts found (empty file, or only blank lines and # comments)")
    return PromptFile(source=source, sha256=hashlib.sha256(data).hexdigest(), items=items)


def read_prompt_file(
    source: str, defaults: Mapping[str, Any], job_seed: int, images_per_prompt: int = 1
) -> PromptFile:
    """Read ``source`` (path or fsspec URL) and parse it."""
    import fsspec

    try:
        with fsspec.open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputFileError(source, 0, "file not found") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(source, 0, f"cannot read: {exc}") from None
    return parse_prompts(source, data, defaults, job_seed, images_per_prompt)


def warn_long_prompts(prompt_file: PromptFile, model: str, max_tokens: int = CLIP_MAX_TOKENS) -> list[str]:
    """Log (and return) a warning per prompt the model's tokenizer will truncate.

    Only the tokenizer files are read, from a local model directory; elsewhere (hub ids,
    fake backends) a words-based estimate is used, since the driver loads no model.
    """
    tokenizer = None
    try:
        from pathlib import Path

        if (Path(model) / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer", local_files_only=True)
    except Exception:  # the warning is advisory; never fail the job over it
        tokenizer = None
    warnings = []
    for item in prompt_file.items:
        for field in ("prompt", "negative_prompt"):
            text = getattr(item.request, field)
            if not text:
                continue
            n = len(tokenizer(text).input_ids) if tokenizer is not None else len(text.split()) + 2
            if n > max_tokens:
                msg = f"{prompt_file.source}:{item.line}: {field} is {n} tokens; the model reads only the first {max_tokens}"
                logger.warning(msg)
                warnings.append(msg)
    return warnings
