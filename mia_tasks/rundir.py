"""The run directory: the contract between stages, on a local path or any pyarrow filesystem URI.

Every file is written whole or not at all: locally to a temporary name in the same folder and
renamed into place (``os.replace`` semantics), on object stores as one PUT. ``RunDir.prepare`` keeps
OUT/config.yaml and refuses to mix outputs made by a different config.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from .config import Config, dump_config, stage_hashes
from .errors import LayerleakError

# Which files prove that a stage has outputs in OUT.
STAGE_OUTPUTS = {"splits": "splits.parquet", "target": "target/metrics.json", "features": "features", "sweep": "sweep"}


class RunDir:
    """OUT as a filesystem and a root; paths are relative to OUT and may not escape it."""

    def __init__(self, out: str):
        self.uri = str(out)
        if "://" in self.uri and not self.uri.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            self.local = False
        else:
            path = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
            self.local = True

    def path(self, rel: str) -> str:
        """Absolute path of ``rel`` inside OUT; refuses paths that would leave OUT."""
        full = posixpath.normpath(posixpath.join(self.root, rel))
        if full != self.root and not full.startswith(self.root.rstrip("/") + "/"):
            raise LayerleakError(f"path {rel!r} would be written outside OUT ({self.root})")
        return full

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str, suffix: str = "") -> list[str]:
        """Names of the files directly in folder ``rel`` ending with ``suffix``, sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                      and not i.base_name.startswith("."))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def mkdir(self, rel: str = "") -> None:
        try:
            self.fs.create_dir(self.path(rel), recursive=True)
        except OSError as e:
            raise LayerleakError(f"cannot create {self.path(rel)}: {e.strerror or e}; choose a writable --out") from None

    # --- whole-or-absent writes ---
    def write_bytes(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        self.mkdir(posixpath.dirname(rel))
        if not self.local:
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise LayerleakError(f"cannot write {final}: {e.strerror or e}; choose a writable --out") from None

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")

    def write_parquet(self, rel: str, table: pa.Table, metadata: dict[str, Any] | None = None) -> None:
        if metadata:
            meta = dict(table.schema.metadata or {})
            meta.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    # --- reads ---
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def parquet_metadata(self, rel: str) -> dict[str, Any]:
        """The JSON key/values a part file carries (raises on a truncated or non-Parquet file)."""
        with self.fs.open_input_file(self.path(rel)) as f:
            meta = pq.read_schema(f).metadata or {}
        out = {}
        for k, v in meta.items():
            try:
                out[k.decode()] = json.loads(v)
            except ValueError:
                continue
        return out

    # --- config ---
    def prepare(self, cfg: Config) -> dict[str, str]:
        """Create OUT, refuse a config whose stages differ from outputs already there, save config.yaml."""
        self.mkdir()
        hashes = stage_hashes(cfg)
        if self.exists("config.yaml"):
            try:
                old = yaml.safe_load(self.read_text("config.yaml")) or {}
            except yaml.YAMLError:
                old = {}
            old_hashes = old.get("hashes", {})
            for stage, marker in STAGE_OUTPUTS.items():
                if old_hashes.get(stage) not in (None, hashes[stage]) and self._has_outputs(marker):
                    changed = _changed_keys(old, cfg.to_dict())
                    raise LayerleakError(f"OUT {self.uri} holds {stage} outputs made with another config "
                                         f"(changed: {', '.join(changed) or 'see config.yaml'}); use a new --out, or delete OUT/{marker}")
        self.write_text("config.yaml", dump_config(cfg))
        return hashes

    def _has_outputs(self, marker: str) -> bool:
        if marker.endswith((".json", ".parquet")):
            return self.exists(marker)
        return bool(self.listdir(marker, ".parquet"))


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        if k == "hashes":
            continue
        a, b = old.get(k), new.get(k)
        path = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, path + ".")
        elif a != b:
            keys.append(path)
    return keys


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
