"""Recording files on disk: `<root>/<conversation id>/<recording id>.ogg` and its timeline
journal `<recording id>.timeline.jsonl`. One folder per conversation, so deleting a
conversation removes every file of its recordings, whatever the rows contain."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)


class RecordingFiles:
    """Paths under root, and the blocking file work on them (run it in a worker thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_paths(self, conversation_id: uuid.UUID, recording_id: uuid.UUID) -> tuple[str, str]:
        """Create the conversation's folder; return the new recording's audio and journal
        paths, relative to root."""
        (self.root / str(conversation_id)).mkdir(parents=True, exist_ok=True)
        base = f"{conversation_id}/{recording_id}"
        return f"{base}.ogg", f"{base}.timeline.jsonl"

    def resolve(self, relative: str) -> Path:
        """Return the absolute path of a stored relative path, which must stay under root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"recording path {relative!r} leaves {self.root}")
        return path

    def read_journal(self, relative: str) -> list[dict[str, Any]]:
        """Return the timeline entries in a journal, sorted by atMs. A missing journal has
        no entries. A line that is not an entry (cut short by a crash, even inside a
        character) is skipped and logged."""
        path = self.resolve(relative)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        entries = []
        # Only "\n" ends a line: text may hold other line separators such as U+2028.
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            entry = _timeline_entry(line)
            if entry is None:
                logger.warning("%s: skipping unreadable timeline line %d", path, number)
                continue
            entries.append(entry)
        entries.sort(key=lambda entry: entry["atMs"])
        return entries

    def remove_journal(self, relative: str) -> None:
        self.resolve(relative).unlink(missing_ok=True)

    def written_within(self, relative: str, seconds: float) -> bool:
        """Return whether the file was modified in the last seconds."""
        path = self.resolve(relative)
        try:
            return time.time() - path.stat().st_mtime < seconds
        except FileNotFoundError:
            return False

    def measure(self, relative: str) -> tuple[int, int]:
        """Decode a recording to measure it; return (duration in ms, size in bytes).

        A file cut short by a crash decodes up to its last whole page. A file that cannot
        be decoded at all measures 0 ms.
        """
        path = self.resolve(relative)
        if not path.is_file():
            return 0, 0
        samples = 0
        rate = 48000
        try:
            with av.open(str(path)) as container:
                stream = container.streams.audio[0]
                rate = stream.rate or rate
                for frame in container.decode(stream):
                    samples += frame.samples
        except (av.FFmpegError, IndexError) as exc:
            logger.warning("%s: decoding stopped after %d samples: %s", path, samples, exc)
        return round(samples * 1000 / rate), path.stat().st_size

    def delete(self, relative_paths: list[str]) -> int:
        """Remove files, and their folders once empty; return how many files existed."""
        removed = 0
        for relative in relative_paths:
            path = self.resolve(relative)
            if path.is_file():
                path.unlink()
                removed += 1
            folder = path.parent
            if folder != self.root.resolve() and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed

    def delete_conversation(self, conversation_id: uuid.UUID) -> int:
        """Remove the conversation's folder; return how many files it held."""
        folder = self.root / str(conversation_id)
        if not folder.is_dir():
            return 0
        count = 0
        # A recording discarded at this moment may remove its own files first.
        for path in list(folder.iterdir()):
            try:
                path.unlink()
                count += 1
            except FileNotFoundError:
                pass
        # A recording starting at this moment may add a file: its own clean-up, which
        # deletes the files of a recording whose conversation is gone, removes the folder.
        with contextlib.suppress(OSError):
            folder.rmdir()
        return count


def _timeline_entry(line: bytes) -> dict[str, Any] | None:
    """Parse one journal line; return None unless it is an object with an integer atMs."""
    try:
        entry = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or type(entry.get("atMs")) is not int:
        return None
    return entry


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are valid to Python's json but not to PostgreSQL's JSONB.
    raise ValueError(f"{name} is not valid JSON")
