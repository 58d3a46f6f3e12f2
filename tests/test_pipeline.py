"""The capstone's service on real brokers: an upload, its status, a caller who waits (Direct Reply-to) and one who
gives up; and a small chaos run on a broker of its own (a worker process killed, connections force-closed, a restart,
a kill -9, poison): zero lost, each job's effect applied once, the poison in the DLQ with its reason."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from helpers import newest_backend
from voicelab import pipeline
from voicelab.jobs import BlobStore, VoiceJob, expected_result, synth_speech, wav_bytes
from voicelab.lab import chaos, chaos_report


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


def test_chaos_accounting_counts_lost_twice_applied_wrong_and_dead_lettered_jobs(tmp_path: Path) -> None:
    """The chaos run's "zero lost" means something only if the accounting finds a loss when there is one."""
    jobs = [VoiceJob.new(f"audio/{i}.wav", i) for i in range(4)]
    log = pipeline.EventLog(tmp_path / "worker-0-0.log")
    log.write("applied", jobs[0].job_id)
    log.write("duplicate", jobs[0].job_id)      # redelivered, done again, applied once
    log.write("applied", jobs[1].job_id)
    log.write("applied", jobs[1].job_id)        # applied twice, and its result is wrong
    log.write("dead-lettered", jobs[2].job_id)  # jobs[3]: never handled, not in the DLQ: lost
    log.close()
    with open(tmp_path / "worker-1-0.log", "w") as f:
        f.write(f"{time.time():.3f} applied {jobs[3].job_id}")   # a killed writer's half line: not counted
    ledger = chaos_report.Ledger(pipeline.LogTail(tmp_path))
    ledger.read()
    stored = {jobs[0].job_id: {"ok": 1}, jobs[1].job_id: {"ok": 0}}

    def status(job_id: str) -> dict:
        return {"status": "done", "result": stored[job_id]} if job_id in stored else {"status": "pending"}

    reasons = {jobs[2].job_id: "cannot be done: KeyError", "poison-a": "poison: not JSON"}
    table = chaos_report.job_table(jobs, status, lambda job: {"ok": 1}, {"poison-a": "not JSON", "poison-b": "x"},
                                   reasons, ledger)
    counts = chaos_report.job_counts(table, uploads=5, confirmed=4, left=0,
                                     dead_letters=Counter({jobs[2].job_id: 1, "poison-a": 2}))
    assert dict(table.set_index("job")["outcome"]) == {
        jobs[0].job_id: "done", jobs[1].job_id: "done", jobs[2].job_id: "dead-lettered", jobs[3].job_id: "lost",
        "poison-a": "dead-lettered", "poison-b": "lost"}
    assert counts == {
        "uploads": 5, "uploads confirmed": 4, "never uploaded": 1, "done": 2, "done, applied once": 1,
        "handled twice or more, applied once": 1, "applied twice": 1, "wrong results": 1, "uploads dead-lettered": 1,
        "poison sent": 2, "poison in DLQ with reason": 1, "dead-lettered twice": 1,
        "lost": 3,   # jobs[3], poison-b, and the upload never made
        "left in queue": 0}


def test_small_chaos_run_loses_nothing_and_applies_each_job_once(fresh_broker) -> None:
    broker = fresh_broker(*newest_backend())   # restarted and killed: a broker of its own
    with BlobStore.temporary() as blobs:
        run = chaos.run_chaos(broker, blobs, n=600, queue="test.chaos", poison_per_kind=2, progress=False)
    c = run.counts
    assert c["lost"] == 0 and c["left in queue"] == 0, c
    assert c["done"] == c["done, applied once"] == c["uploads confirmed"] == 600, c
    assert c["applied twice"] == 0 and c["wrong results"] == 0, c
    assert c["in hand at the worker kill and the forced close"] >= 2, "each of the two faults hit a job in hand"
    assert c["of them, done again and not applied again"] == c["in hand at the worker kill and the forced close"], c
    assert c["poison in DLQ with reason"] == c["poison sent"] == 6 and c["uploads dead-lettered"] == 0, c
    assert list(run.events["event"]) == [name for _, name in chaos.CHAOS]
    reasons = run.jobs[run.jobs["kind"] != "upload"].set_index("kind")["reason"]
    assert reasons.str.startswith("poison: ").sum() == 4 and reasons.str.contains("KeyError").sum() == 2, reasons
    s = run.samples
    assert s["workers replaced"].iloc[-1] >= 1 and s["connection errors"].iloc[-1] >= 4
    assert s["ready"].isna().any(), "the queue could not be read while the broker was down"
