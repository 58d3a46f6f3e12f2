"""The capstone's service on real brokers: an upload, its status, a caller who waits (Direct Reply-to) and one who
gives up; and a small chaos run on a broker of its own (a worker process killed, connections force-closed, a restart,
a kill -9, poison): zero lost, each job's effect applied once, the poison in the DLQ with its reason."""

from __future__ import annotations

import time

from helpers import images, start_backend
from voicelab import broker as vb
from voicelab import pipeline
from voicelab.lab import chaos
from voicelab.jobs import BlobStore, VoiceJob, expected_result, synth_speech, wav_bytes


def _wait_done(service: pipeline.VoiceService, job_ids: list[str], timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = {j: service.status(j) for j in job_ids}
        if all(s["status"] == "done" for s in statuses.values()):
            return statuses
        time.sleep(0.05)
    return statuses


def test_upload_answers_at_once_status_by_id_and_waiting_with_a_timeout(any_broker) -> None:
    with BlobStore.temporary() as blobs:
        service = pipeline.VoiceService(any_broker, blobs, queue="test.pipeline.service", effort=2)
        service.declare(fresh=True)
        audio = wav_bytes(synth_speech(0.5, seed=3))
        try:
            reply = service.upload(audio, user_id=7)
            assert reply["status"] == "processing" and reply["job_id"]
            assert service.status(reply["job_id"]) == {"job_id": reply["job_id"], "status": "pending"}, "no worker yet"
            gave_up = service.upload_and_wait(audio, user_id=8, timeout=0.3)   # nobody works: the timeout answers
            assert gave_up["status"] == "pending" and 0.3 <= gave_up["waited_s"] < 1.5, gave_up
            with service.fleet(processes=1, threads=2):
                # the worker first replies to the caller who left (its reply address is gone), then to this one
                waited = service.upload_and_wait(audio, user_id=9, timeout=30)
                statuses = _wait_done(service, [reply["job_id"], gave_up["job_id"]])
            key = blobs.put(audio)
            assert waited["status"] == "done", waited
            assert waited["result"] == expected_result(VoiceJob(waited["job_id"], key, 9), blobs, effort=2)
            assert statuses[reply["job_id"]]["result"] == expected_result(VoiceJob(reply["job_id"], key, 7), blobs,
                                                                          effort=2)
            assert statuses[gave_up["job_id"]]["status"] == "done", "the job went on after its caller gave up"
        finally:
            service.delete()


def test_status_of_a_dead_lettered_job_is_failed_with_its_reason(any_broker) -> None:
    with BlobStore.temporary() as blobs:
        service = pipeline.VoiceService(any_broker, blobs, queue="test.pipeline.failed", effort=1)
        service.declare(fresh=True)
        missing = VoiceJob.new("audio/never-uploaded.wav", 7)   # its audio is not in the store: cannot be done
        try:
            service._enqueue(None, service.queue, missing)
            with service.fleet(processes=1, threads=1):
                deadline = time.monotonic() + 30
                while service.status(missing.job_id)["status"] == "pending" and time.monotonic() < deadline:
                    time.sleep(0.05)
            status = service.status(missing.job_id)
            assert status["status"] == "failed" and "KeyError" in status["reason"], status
        finally:
            service.delete()


def test_result_files_apply_once_and_refuse_an_escaping_job_id() -> None:
    with BlobStore.temporary() as blobs:
        results = pipeline.ResultFiles(blobs)
        assert [results.apply("j1", {"n": i}) for i in range(3)] == [True, False, False]
        assert results.result("j1") == {"n": 0} and results.applied == 1
        try:
            results.apply("../../etc/x", {"n": 1})
        except ValueError as e:
            assert "escapes" in str(e)
        else:
            raise AssertionError("a job id that leaves the store must be refused")


def test_small_chaos_run_loses_nothing_and_applies_each_job_once() -> None:
    ok, _ = vb.docker_engine()
    broker = start_backend("container", images()[-1]) if ok else start_backend("local", None)
    try:
        with BlobStore.temporary() as blobs:
            run = chaos.run_chaos(broker, blobs, n=600, queue="test.chaos", poison_per_kind=2, progress=False)
    finally:
        broker.stop()
    c = run.counts
    assert c["lost"] == 0 and c["left in queue"] == 0, c
    assert c["done"] == c["done, applied once"] == c["uploads confirmed"] == 600, c
    assert c["applied twice"] == 0 and c["wrong results"] == 0, c
    assert c["handled twice or more, applied once"] >= 1, "the jobs in flight at the faults came back"
    assert c["poison in DLQ with reason"] == c["poison sent"] == 6 and c["uploads dead-lettered"] == 0, c
    assert list(run.events["event"]) == [name for _, name in chaos.CHAOS]
    reasons = run.jobs[run.jobs["kind"] != "upload"].set_index("kind")["reason"]
    assert reasons.str.startswith("poison: ").sum() == 4 and reasons.str.contains("KeyError").sum() == 2, reasons
    s = run.samples
    assert s["workers replaced"].iloc[-1] >= 1 and s["connection errors"].iloc[-1] >= 4
    assert s["ready"].isna().any(), "the queue could not be read while the broker was down"
