"""The capstone's results: one file per job in the blob store, applied at most once across processes.

Example::

    results = ResultFiles(blobs)
    results.apply(job.job_id, {"rms": 0.2})   # True: this call stored it; False: it was there already
    results.result(job.job_id)                # {'rms': 0.2}
    results.fail(job.job_id, "poison: ...")   # why a job was dead-lettered (the first reason stays)
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from ..jobs import BlobStore, load_result


class ResultFiles:
    """Results by ``job_id`` in a :class:`~voicelab.jobs.BlobStore`, applied at most once, from any process.

    :meth:`apply` writes the result to a temporary file and hard-links it to
    ``results/<job_id>.json``: the link is atomic and fails when the file
    exists, so of two workers that finish the same job (a redelivery) exactly
    one applies it, and a reader never sees half a result. The same interface
    as :class:`voicelab.reconnect.ResultStore`, which holds results in one process only.

    >>> blobs = BlobStore.temporary()
    >>> results = ResultFiles(blobs)
    >>> results.apply("j1", {"ok": 1}), results.apply("j1", {"ok": 2}), results.result("j1"), results.applied
    (True, False, {'ok': 1}, 1)
    >>> blobs.close()
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.folder = blobs.root / "results"
        self.folder.mkdir(parents=True, exist_ok=True)
        (blobs.root / "failures").mkdir(exist_ok=True)

    def apply(self, job_id: str, result: Any) -> bool:
        """Store ``result`` for ``job_id`` unless one is there; True if this call applied it."""
        return self._link_once(f"results/{job_id}.json", json.dumps(result, sort_keys=True).encode())

    def _link_once(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless a file is there (atomic hard link); True if this call wrote it."""
        path = self.blobs._path(key)   # refuses a key that escapes the store
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def result(self, job_id: str) -> Any:
        """The result applied for ``job_id``, or None."""
        return load_result(self.blobs, job_id)

    def fail(self, job_id: str, reason: str) -> None:
        """Record that ``job_id`` was dead-lettered and why (the first reason stays)."""
        self._link_once(f"failures/{job_id}.txt", reason.encode())

    def failure(self, job_id: str) -> str | None:
        """Why ``job_id`` was dead-lettered, or None."""
        path = self.blobs._path(f"failures/{job_id}.txt")
        return path.read_text() if path.exists() else None

    @property
    def applied(self) -> int:
        """How many results are stored."""
        return sum(1 for _ in self.folder.glob("*.json"))
