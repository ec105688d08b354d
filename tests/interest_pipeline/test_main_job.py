"""The main job's watch over its backfill, without a scheduler: the metadata-DB reads, the
scheduler check and the cancel are replaced by fakes (the real ones run in
tests/integration/test_end_to_end.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from interest_pipeline import airflow_local, main_job

RUNS = [datetime(2010, 11, 10, tzinfo=UTC) + timedelta(hours=i) for i in range(4)]
IDS = [f"backfill__{r:%Y-%m-%dT%H}" for r in RUNS]


class FakeAirflow:
    """The backfill's run states, poll by poll, and what the job did to them."""

    def __init__(self, polls: list[dict[str, str]], complete_after: int | None = None,
                 problem: str | None = None) -> None:
        self.polls, self.complete_after, self.problem = polls, complete_after, problem
        self.reads = 0
        self.cancelled: list[int] = []

    def states(self, backfill_id: int) -> tuple[dict[str, str], bool]:
        index = min(self.reads, len(self.polls) - 1)
        self.reads += 1
        complete = self.complete_after is not None and index >= self.complete_after
        return dict(self.polls[index]), complete

    def cancel(self, backfill_id: int) -> int:
        self.cancelled.append(backfill_id)
        last = self.polls[-1]
        self.polls.append({r: "failed" if s == "queued" else s for r, s in last.items()})
        return sum(1 for s in last.values() if s == "queued")


@pytest.fixture
def fake(monkeypatch):
    def install(*args, **kwargs) -> FakeAirflow:
        airflow = FakeAirflow(*args, **kwargs)
        monkeypatch.setattr(main_job, "_backfill_states", airflow.states)
        monkeypatch.setattr(main_job, "cancel_backfill", airflow.cancel)
        monkeypatch.setattr(main_job, "_describe_failure",
                            lambda run_id, env, dag_id: f"run {run_id} failed")
        monkeypatch.setattr(airflow_local, "scheduler_problem",
                            lambda env, heartbeat_timeout: airflow.problem)
        return airflow
    return install


def _states(*states: str) -> dict[str, str]:
    return dict(zip(IDS, states, strict=True))


def _wait(backfill_id: int = 7) -> int:
    return main_job.wait_for_backfill(RUNS, {}, backfill_id, poll_seconds=0,
                                      heartbeat_timeout=120)


def test_a_completed_backfill_returns_with_progress_lines(fake, capsys):
    fake([_states("running", "queued", "queued", "queued"),
          _states("success", "running", "queued", "queued"),
          _states("success", "success", "success", "success")], complete_after=2)
    assert _wait() == 4
    out = capsys.readouterr().out
    assert "backfill: 0/4 runs done" in out and "running backfill__2010-11-10T00" in out
    assert out.strip().splitlines()[-1].startswith("backfill: 4/4 runs done")


def test_a_failed_run_cancels_the_rest_and_says_what_became_of_it(fake):
    airflow = fake([_states("success", "running", "queued", "queued"),
                    _states("success", "failed", "queued", "queued")])
    with pytest.raises(main_job.RunFailed) as failure:
        _wait(backfill_id=7)
    assert airflow.cancelled == [7]
    message = str(failure.value)
    assert message.startswith("run backfill__2010-11-10T01 failed\n")
    assert message.splitlines()[-1] == (
        "backfill 7 cancelled: 1 run(s) done, 1 failed, 2 not started and marked failed"
    )


def test_a_run_already_running_when_another_fails_is_named(fake):
    fake([_states("failed", "running", "queued", "queued")])
    with pytest.raises(main_job.RunFailed, match=(
        r"1 failed, 2 not started and marked failed; backfill__2010-11-10T01 was already "
        r"running and finishes"
    )):
        _wait()


def test_hours_skipped_as_already_done_count_as_done(fake):
    fake([{IDS[2]: "failed", IDS[3]: "queued"}])  # the first two hours were done before
    with pytest.raises(main_job.RunFailed, match=r"2 run\(s\) done, 1 failed, 1 not started"):
        _wait()


def test_a_dead_scheduler_fails_the_wait_and_keeps_the_backfill(fake):
    airflow = fake([_states("success", "queued", "queued", "queued")],
                   problem="the Airflow scheduler is not running (its process is gone; log: x)")
    with pytest.raises(main_job.SchedulerDown) as down:
        _wait(backfill_id=3)
    assert str(down.value) == (
        "the Airflow scheduler is not running (its process is gone; log: x); "
        "backfill 3 is kept (1/4 runs done)"
    )
    assert airflow.cancelled == []


def test_a_finished_backfill_is_not_blamed_on_a_scheduler_that_stopped_since(fake):
    fake([_states("success", "success", "success", "success")], complete_after=0,
         problem="the Airflow scheduler is not running")
    assert _wait() == 4


def test_the_main_job_says_in_one_line_what_to_run_and_stops_only_what_it_started(
    monkeypatch, capsys
):
    calls: dict[str, object] = {}
    monkeypatch.setattr(airflow_local, "local_env", dict)
    monkeypatch.setattr(airflow_local, "status", lambda env: {
        "api-server": 11, "scheduler": None, "dag-processor": 12, "triggerer": 13,
    })
    monkeypatch.setattr(airflow_local, "start", lambda env: calls.setdefault("start", True))
    monkeypatch.setattr(airflow_local, "stop",
                        lambda env, only=None: calls.setdefault("stopped", list(only)))
    monkeypatch.setattr(main_job, "create_backfill", lambda runs, env, reprocess, dag_id: 5)

    def scheduler_dies(*args, **kwargs):
        raise main_job.SchedulerDown(
            "the Airflow scheduler is not running (its process is gone; log: x); backfill 5 is "
            "kept (1/3 runs done)"
        )

    monkeypatch.setattr(main_job, "wait_for_backfill", scheduler_dies)
    argv = ["--skip-replay", "--start", "2010-11-10T00:00", "--end", "2010-11-10T03:00"]
    assert main_job.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("interest-main-job: the Airflow scheduler is not running")
    assert err[0].endswith(
        "backfill 5 is kept (1/3 runs done): run `interest-airflow stop`, then "
        "`interest-main-job --skip-replay --start 2010-11-10T00:00 --end 2010-11-10T03:00` "
        "again to finish it"
    )
    assert calls == {"start": True, "stopped": ["scheduler"]}
