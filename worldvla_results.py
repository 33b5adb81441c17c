"""Outputs that survive a crash: records appended as whole JSON lines, files replaced atomically, folders
published by renames.

`eval_libero.py` (episodes), `eval_world_model.py` (trajectories) and `train_vq.py` (settings, metrics) keep their
results with these, so that a run killed at any moment resumes from what is on disk and never reads half a file;
`train.py` and `train_vq.py` publish their model and processor folders whole.
"""

import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def read_jsonl(path, redone="record"):
    """The finished records of a JSON-lines file. A truncated last line (a crash mid-write) is cut from the file,
    so that the next append starts on a fresh line, and its `redone` (episode, trajectory) is done again; a
    corrupted line inside the file is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good_bytes = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            records.append(json.loads(line))
            good_bytes += len(line)
        except ValueError:
            if good_bytes + len(line) < len(raw):
                logger.warning("Skipping a corrupted line in %s", path)
                good_bytes += len(line)
                continue
            logger.warning("Dropping a truncated last line of %s: its %s will be done again", path, redone)
    if good_bytes < len(raw):
        with open(path, "r+b") as stream:
            stream.truncate(good_bytes)
            os.fsync(stream.fileno())
    return records


def append_jsonl(path, record):
    """Appends one JSON line with a single write, then fsyncs: a line is whole or absent."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomically(path, text):
    """Writes `text` to a temporary file beside `path` (named by the process, so that parallel writers do not
    share it), then renames it over `path`: readers see the old file or the new one, never a part."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json_atomically(path, payload):
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def staging_folder(final):
    """Where `final` is written before it is published; the same name on every process."""
    return Path(final).with_name(Path(final).name + ".incomplete")


def publish_folder(staging, final):
    """Make `staging` appear as `final` by renames only: a crash leaves the old `final` (or, between the two
    renames, the old one as `<final>.previous`, put back by the next call), never half of one."""
    final, staging = Path(final), Path(staging)
    previous = final.with_name(final.name + ".previous")
    if previous.exists() and not final.exists():
        previous.rename(final)  # a crash between the renames of an earlier call
    elif previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        final.rename(previous)
    staging.rename(final)
    if previous.exists():
        shutil.rmtree(previous)
