"""Reads back an offline W&B run (``wandb/offline-run-*/run-*.wandb``) for tests: its records, the
history rows, the config and the summary, as the W&B UI would show them after ``wandb sync``.

File layout (checked against the bytes wandb 0.31's ``wandb-core`` writes, and against the leveldb
log format it extends, https://github.com/google/leveldb/blob/main/doc/log_format.md):

* a 7-byte W&B header: the ident ``b":W&B"``, a magic ``0xBEE1`` (uint16, little endian) and a
  version byte (0);
* then leveldb-log chunks in 32 KiB blocks. The header counts as the first 7 bytes of the first
  block: block ``k`` spans file offsets ``[k * 32768, (k + 1) * 32768)``. Each chunk is a 7-byte
  header (checksum uint32 LE, length uint16 LE, type uint8) followed by ``length`` bytes. A block
  tail shorter than a chunk header is zero padding. The checksum is the plain CRC-32 (zlib's, not
  leveldb's masked CRC-32C) of the type byte followed by the data;
* types 1 FULL (a whole record), 2 FIRST, 3 MIDDLE, 4 LAST (the pieces of a record that crosses a
  block boundary, concatenated in order);
* each record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

Values (history, config, summary items) are JSON text; an item names its key either as ``key`` or
as a ``nested_key`` path (``["samples/scatter", "width"]`` is ``row["samples/scatter"]["width"]``).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2",
                         reason="wandb.proto is not installed: offline .wandb files cannot be parsed")

IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_runs(save_dir: Path) -> list[Path]:
    """The ``.wandb`` file of every offline run under ``save_dir`` (its ``wandb/`` folder)."""
    return sorted(Path(save_dir).glob("wandb/offline-run-*/run-*.wandb"))


def payloads(data: bytes) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file's bytes, checksums verified."""
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise ValueError(f"not a W&B record file (header {data[:FILE_HEADER.size]!r})")
    pos, pending = FILE_HEADER.size, None
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:  # trailer: zero padding up to the next block
            pos += left
            continue
        if pos + CHUNK_HEADER.size > len(data):
            raise ValueError(f"truncated chunk header at offset {pos}")
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        chunk = data[start:start + length]
        if len(chunk) != length or length > left - CHUNK_HEADER.size:
            raise ValueError(f"chunk at offset {pos} runs past its block or the file")
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"checksum mismatch in the chunk at offset {pos}")
        pos = start + length
        if kind == FULL and pending is None:
            yield chunk
        elif kind == FIRST and pending is None:
            pending = chunk
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            if kind == LAST:
                yield pending
                pending = None
        else:
            raise ValueError(f"chunk type {kind} out of order at offset {pos}")
    if pending is not None:
        raise ValueError("the file ends inside a record")


def records(path: Path) -> list:
    """Every ``Record`` of a ``.wandb`` file, in the order they were written."""
    out = []
    for payload in payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def _put(target: dict, item: Any) -> None:
    """Set ``target[key]`` (or its nested path) to the item's parsed JSON value."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = json.loads(item.value_json)


def _drop(target: dict, item: Any) -> None:
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.get(part, {})
    target.pop(path[-1], None)


def of_kind(recs: list, kind: str) -> list:
    """The payloads of the records of one kind (``"run"``, ``"history"``, ``"config"`` ...)."""
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def run_record(recs: list):
    """The run's ``RunRecord`` (job_type, tags, run_group, display_name, the initial config)."""
    found = of_kind(recs, "run")
    if len(found) != 1:
        raise ValueError(f"expected one run record, found {len(found)}")
    return found[0]


def history(recs: list) -> list[dict]:
    """The logged rows in order, each a dict key -> value, with W&B's own ``_step``."""
    rows = []
    for rec in of_kind(recs, "history"):
        row: dict = {}
        for item in rec.item:
            _put(row, item)
        row.setdefault("_step", rec.step.num)
        rows.append(row)
    return rows


def config(recs: list) -> dict:
    """The run's config as W&B ends up with it: the one passed to ``wandb.init``, then each update."""
    out: dict = {}
    for update in [run_record(recs).config, *of_kind(recs, "config")]:
        for item in update.update:
            _put(out, item)
        for item in update.remove:
            _drop(out, item)
    return out


def summary(recs: list) -> dict:
    """The run's summary after its last update."""
    out: dict = {}
    for update in of_kind(recs, "summary"):
        for item in update.update:
            _put(out, item)
        for item in update.remove:
            _drop(out, item)
    return out


def step_metrics(recs: list) -> dict[str, str]:
    """``define_metric`` globs and names -> their step metric (``{"sharpness/*": "trainer/global_step"}``)."""
    out = {}
    for metric in of_kind(recs, "metric"):
        name = metric.glob_name or metric.name
        if metric.step_metric:
            out[name] = metric.step_metric
    return out


def artifacts(recs: list) -> list[dict]:
    """The artifacts the run logged: type, name, aliases and the paths of their files."""
    return [{"type": a.type, "name": a.name, "aliases": list(a.aliases),
             "files": sorted(e.path for e in a.manifest.contents)} for a in of_kind(recs, "artifact")]
