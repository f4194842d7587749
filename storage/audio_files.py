"""Audio files on disk: utterances the caller spoke and chunks Parley synthesised.

A file id is 32 hex characters; the file lives at `<root>/<first two>/<id>.wav`, so one
folder never gathers more than a few thousand files.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import numpy as np

from media.frames import write_wav

FILE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class AudioFileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, file_id: str) -> Path | None:
        """Return the path of a stored file, or None when the id is malformed."""
        if not FILE_ID_PATTERN.fullmatch(file_id):
            return None
        return self.root / file_id[:2] / f"{file_id}.wav"

    async def save(self, samples: np.ndarray, sample_rate_hz: int) -> tuple[str, float]:
        """Write mono int16 samples as a WAV file off the event loop; return (id, seconds)."""
        return await asyncio.to_thread(self.save_blocking, samples, sample_rate_hz)

    def save_blocking(self, samples: np.ndarray, sample_rate_hz: int) -> tuple[str, float]:
        file_id = uuid.uuid4().hex
        path = self.root / file_id[:2] / f"{file_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        write_wav(partial, samples, sample_rate_hz)
        # Rename last, so a reader never sees a half-written file under the real name.
        partial.replace(path)
        return file_id, len(samples) / sample_rate_hz

    async def delete(self, file_ids: list[str]) -> int:
        """Remove stored files off the event loop; return how many existed."""
        return await asyncio.to_thread(self._delete_blocking, file_ids)

    def _delete_blocking(self, file_ids: list[str]) -> int:
        removed = 0
        for file_id in file_ids:
            path = self.path_for(file_id)
            if path is not None and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed
