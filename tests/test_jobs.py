"""The running example: audio, blob store, job messages and the deterministic analysis."""

from __future__ import annotations

import numpy as np
import pytest

from voicelab.jobs import (BadJob, BlobStore, VoiceJob, analyse, expected_result, load_result, process_job, read_wav, save_result, synth_speech, wav_bytes)


def test_speech_is_deterministic_and_distinct() -> None:
    a, b, c = synth_speech(1, seed=1), synth_speech(1, seed=1), synth_speech(1, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and np.abs(a).max() <= 1


def test_wav_round_trip() -> None:
    audio = synth_speech(0.5, seed=3)
    back, rate = read_wav(wav_bytes(audio))
    assert rate == 16_000 and np.abs(back - audio).max() < 1e-4


def test_analysis_finds_the_synthesized_pitch() -> None:
    result = analyse(synth_speech(2, seed=4))
    assert result["duration_s"] == 2.0
    assert 60 <= result["pitch_hz"] <= 400 and 0.2 < result["voiced_fraction"] < 0.9
    assert analyse(synth_speech(2, seed=4)) == result
    assert analyse(synth_speech(2, seed=5)) != result


@pytest.mark.parametrize("body, field", [
    (b"not json", "not JSON"), (b"[1, 2]", "JSON object"), (b'{"job_id": "a", "blob_key": "k"}', "user_id"),
    (b'{"job_id": 1, "blob_key": "k", "user_id": 2}', "job_id"),
])
def test_malformed_jobs_say_what_is_wrong(body: bytes, field: str) -> None:
    with pytest.raises(BadJob, match=field):
        VoiceJob.from_json(body)


@pytest.mark.parametrize("blob_key, user_id, field", [
    ("", 1, "blob_key"), ("  ", 1, "blob_key"), (None, 1, "blob_key"), ("audio/a.wav", -1, "user_id"),
    ("audio/a.wav", "7", "user_id"), ("audio/a.wav", True, "user_id"), ("", -1, "blob_key"),
])
def test_a_job_that_could_never_be_done_is_refused(blob_key, user_id, field) -> None:
    with pytest.raises(ValueError, match=field):
        VoiceJob.new(blob_key, user_id)


def test_process_job_claim_check_and_results() -> None:
    with BlobStore.temporary() as store:
        job = VoiceJob.new(store.put(wav_bytes(synth_speech(1, seed=6))), user_id=9)
        assert VoiceJob.from_json(job.to_json()) == job
        assert len(job.to_json()) < 200, "the message carries the key, not the audio"
        result = process_job(job, store)
        assert result == expected_result(job, store) and result["user_id"] == 9
        assert load_result(store, job.job_id) is None
        save_result(store, result)
        assert load_result(store, job.job_id) == result
        assert process_job(job, store, kind="io", io_seconds=0)["duration_s"] == 1.0
        with pytest.raises(ValueError, match="'gpu'"):
            process_job(job, store, kind="gpu")  # type: ignore[arg-type]


def test_blob_store_refuses_keys_outside_it() -> None:
    with BlobStore.temporary() as store:
        with pytest.raises(ValueError, match="escapes"):
            store.get("../../etc/passwd")
        with pytest.raises(KeyError):
            store.get("audio/missing.wav")
