"""The running example: voice jobs, for real.

A user uploads audio; the audio goes to a blob store (a folder standing in for
S3) and the message carries only its key (the *claim check* pattern: queues
move small messages, not megabytes of audio). A worker fetches the audio and
runs :func:`analyse`, real signal work (framing, windowing, FFT), whose result
is deterministic, so a test can tell a right answer from a wrong one.

Example::

    store = BlobStore.temporary()
    key = store.put(wav_bytes(synth_speech(seed=1)))
    job = VoiceJob.new(blob_key=key, user_id=7)
    result = process_job(job, store)
    assert result == expected_result(job, store)
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
import uuid
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

SAMPLE_RATE = 16_000
JOB_TYPE = "voice.analyse"
"""The AMQP ``type`` property of a voice job; a worker refuses a message of another type as poison."""
JSON_TYPES = ("application/json", "application/json; charset=utf-8")


class BadJob(ValueError):
    """A message that is not a valid voice job (not JSON, fields missing or of the wrong type, wrong content type
    or job type)."""


def synth_speech(seconds: float = 3.0, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio: voiced syllables (a pitch with harmonics shaped by formants), pauses and noise.

    Deterministic for a given ``seed``; float32 in [-1, 1].

    >>> synth_speech(0.5, seed=1).shape
    (8000,)
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pitch = rng.uniform(95, 230) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    formants = rng.uniform([500, 1200, 2400], [900, 2000, 3200])
    voice = np.zeros(n)
    for k in range(1, 25):
        f = k * pitch
        gain = sum(np.exp(-(((f - fm) / 150.0) ** 2)) for fm in formants) + 0.05
        voice += gain * np.sin(k * phase) / k
    syllable_rate = rng.uniform(3, 5)  # syllables per second, with pauses between words
    envelope = np.clip(np.sin(np.pi * syllable_rate * t) ** 2 - 0.1, 0, None)
    envelope *= (np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, np.pi)) > -0.6)
    audio = envelope * voice + 0.01 * rng.standard_normal(n)
    return (0.9 * audio / np.max(np.abs(audio))).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode float samples in [-1, 1] as a 16-bit mono WAV file."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a 16-bit mono WAV file into (float32 samples, sample rate)."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("only 16-bit mono WAV is supported")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return (pcm / 32767).astype(np.float32), w.getframerate()


class BlobStore:
    """A folder of blobs addressed by key: a local stand-in for S3.

    >>> store = BlobStore.temporary()
    >>> store.get(store.put(b"hello"))
    b'hello'
    >>> store.close()
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._temporary = False

    @classmethod
    def temporary(cls) -> "BlobStore":
        """A store in a new temporary folder, deleted by :meth:`close`."""
        store = cls(tempfile.mkdtemp(prefix="voicelab-blobs-"))
        store._temporary = True
        return store

    def put(self, data: bytes, prefix: str = "audio", suffix: str = ".wav") -> str:
        """Store ``data`` under a content-addressed key and return the key."""
        key = f"{prefix}/{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp-" + uuid.uuid4().hex)
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half a file
        return key

    def put_at(self, key: str, data: bytes) -> None:
        """Store ``data`` under a given ``key`` (overwrites)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp-" + uuid.uuid4().hex)
        tmp.write_bytes(data)
        tmp.replace(path)

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; ``KeyError`` if there are none."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"no blob {key!r} in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key {key!r} escapes the store")
        return path

    def close(self) -> None:
        """Delete the folder if this store made it (``temporary()``)."""
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "BlobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class VoiceJob:
    """What travels on the queue: a job id and the *key* of the audio, never the audio itself."""

    job_id: str
    blob_key: str
    user_id: int

    @classmethod
    def new(cls, blob_key: str, user_id: int) -> "VoiceJob":
        """A job with a fresh ``job_id`` for the audio at ``blob_key`` of user ``user_id``.

        Refuses, naming the field, a job that could never be done: an empty ``blob_key`` (no audio
        to fetch) or a ``user_id`` that is not an int >= 0.

        >>> VoiceJob.new("audio/a.wav", user_id=7).blob_key
        'audio/a.wav'
        >>> VoiceJob.new("", user_id=7)
        Traceback (most recent call last):
        ...
        ValueError: blob_key must be the non-empty key of the audio in the blob store, got ''
        """
        if not isinstance(blob_key, str) or not blob_key.strip():
            raise ValueError(f"blob_key must be the non-empty key of the audio in the blob store, got {blob_key!r}")
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
            raise ValueError(f"user_id must be an int >= 0, got {user_id!r}")
        return cls(job_id=uuid.uuid4().hex, blob_key=blob_key, user_id=user_id)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "VoiceJob":
        """Parse a message body; :class:`BadJob` says what is wrong with a malformed one."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadJob(f"body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadJob(f"body must be a JSON object, got {type(data).__name__}")
        types = {"job_id": str, "blob_key": str, "user_id": int}
        for field, kind in types.items():
            if not isinstance(data.get(field), kind):
                raise BadJob(f"field {field!r} must be {kind.__name__}, got {data.get(field)!r}")
        return cls(**{k: data[k] for k in types})

    @classmethod
    def from_message(cls, properties: Any, body: bytes) -> "VoiceJob":
        """Parse a delivery: its ``content_type`` and ``type`` properties (when set), then its body.

        A JSON body labelled ``text/plain``, or a job of a type this worker does not do, is as
        poisonous as a body that is not JSON: :class:`BadJob` says which. Unset properties are
        accepted (the body decides).

        >>> import pika
        >>> VoiceJob.from_message(pika.BasicProperties(type="voice.transcribe"), b"{}")
        Traceback (most recent call last):
        ...
        voicelab.jobs.BadJob: unknown job type 'voice.transcribe': this worker does 'voice.analyse'
        """
        content_type = getattr(properties, "content_type", None)
        if content_type is not None and content_type.lower().replace(" ", "") not in [t.replace(" ", "") for t in JSON_TYPES]:
            raise BadJob(f"content type {content_type!r} is not JSON (a voice job is application/json)")
        kind = getattr(properties, "type", None)
        if kind is not None and kind != JOB_TYPE:
            raise BadJob(f"unknown job type {kind!r}: this worker does {JOB_TYPE!r}")
        return cls.from_json(body)


def job_id_of(body: bytes) -> str | None:
    """The ``job_id`` a message body carries (a JSON object whose ``job_id`` is a string), else None.

    Unlike :meth:`VoiceJob.from_json` it asks nothing else of the body: a poison message may still name its job.

    >>> job_id_of(b'{"job_id": "j1", "user_id": "not an int"}'), job_id_of(b"not json"), job_id_of(b"[1]")
    ('j1', None, None)
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None


def analyse(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, effort: int = 4) -> dict[str, float]:
    """Real signal work: frame the audio, FFT each frame at ``effort`` resolutions, summarise.

    Returns duration (s), RMS level, voiced fraction, median pitch (Hz) and
    spectral centroid (Hz), rounded so that the result is deterministic.
    More ``effort`` means more FFT resolutions: a tunable stand-in for a heavy model.
    """
    if effort < 1:
        raise ValueError(f"effort must be >= 1, got {effort}")
    x = np.asarray(samples, dtype=np.float64)
    hop = sample_rate // 100  # 10 ms
    centroids, pitches, voiced = [], [], 0
    for r in range(effort):
        size = 2 ** (9 + r % 3)  # 512, 1024, 2048 samples
        n_frames = max(1, 1 + (len(x) - size) // hop)
        idx = np.arange(size)[None, :] + hop * np.arange(n_frames)[:, None]
        frames = np.pad(x, (0, size))[idx] * np.hanning(size)
        spec = np.abs(np.fft.rfft(frames, axis=1))
        freqs = np.fft.rfftfreq(size, 1 / sample_rate)
        energy = spec.sum(axis=1) + 1e-12
        centroids.append(float(np.median((spec * freqs).sum(axis=1) / energy)))
        # pitch by autocorrelation (through the power spectrum) on loud frames
        loud = (frames**2).mean(axis=1) > 0.002
        if r == 0:
            voiced = int(loud.sum())
        if loud.any():
            ac = np.fft.irfft(spec[loud] ** 2, axis=1)
            lo, hi = sample_rate // 400, sample_rate // 60
            lags = lo + np.argmax(ac[:, lo:hi], axis=1)
            pitches.append(float(np.median(sample_rate / lags)))
    n0 = max(1, 1 + (len(x) - 512) // hop)
    return {
        "duration_s": round(len(x) / sample_rate, 3),
        "rms": round(float(np.sqrt((x**2).mean())), 3),
        "voiced_fraction": round(voiced / n0, 2),
        "pitch_hz": round(float(np.median(pitches)) if pitches else 0.0, -1),
        "centroid_hz": round(float(np.median(centroids)), -1),
    }


Kind = Literal["cpu", "io"]


def process_job(job: VoiceJob, store: BlobStore, kind: Kind = "cpu", io_seconds: float = 0.05,
                effort: int = 4) -> dict[str, Any]:
    """Do a job: fetch its audio, analyse it (``"cpu"``) or wait on a slow service (``"io"``).

    Returns the result, which :func:`expected_result` can recompute independently.
    """
    samples, rate = read_wav(store.get(job.blob_key))
    if kind == "cpu":
        features = analyse(samples, rate, effort=effort)
    elif kind == "io":
        time.sleep(io_seconds)  # e.g. a call to a remote speech API
        features = {"duration_s": round(len(samples) / rate, 3)}
    else:
        raise ValueError(f"kind must be 'cpu' or 'io', not {kind!r}")
    return {"job_id": job.job_id, "user_id": job.user_id, **features}


def expected_result(job: VoiceJob, store: BlobStore, kind: Kind = "cpu", effort: int = 4) -> dict[str, Any]:
    """The right answer for ``job``, computed without any queue."""
    return process_job(job, store, kind=kind, io_seconds=0.0, effort=effort)


def save_result(store: BlobStore, result: dict[str, Any]) -> str:
    """Store a job's result as ``results/<job_id>.json``; return the key."""
    key = f"results/{result['job_id']}.json"
    store.put_at(key, json.dumps(result, sort_keys=True).encode())
    return key


def load_result(store: BlobStore, job_id: str) -> dict[str, Any] | None:
    """The stored result of ``job_id``, or None when no worker has finished it."""
    try:
        return json.loads(store.get(f"results/{job_id}.json"))
    except KeyError:
        return None
