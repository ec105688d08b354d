"""The local Airflow's helpers that need no running Airflow: ports, SQLite transactions, the
dead-scheduler check and progress while waiting.

The SQLite tests use plain SQLAlchemy on a file in ``tmp_path``: the first shows the failure
Airflow's backfill creation met (a savepoint outside a transaction reads a snapshot, then its
write fails at once when another process committed meanwhile, and releasing it commits), the
second that :func:`airflow_local.immediate_transactions` takes the write lock first and
commits once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from interest_pipeline import airflow_local
from interest_pipeline.config import local_airflow_env

PORT_KEYS = (
    "AIRFLOW__API__PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)


@pytest.fixture
def clean_env(monkeypatch):
    for key in (*PORT_KEYS, "AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                "INTEREST_AIRFLOW_PORT", "INTEREST_AIRFLOW_LOG_SERVER_PORT",
                "INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _ports(env: dict[str, str]) -> set[int]:
    return {int(env[key]) for key in PORT_KEYS}


def test_every_port_of_an_instance_follows_interest_airflow_port(clean_env):
    default = local_airflow_env()
    assert _ports(default) == {8080, 8081, 8082}
    assert default["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    clean_env.setenv("INTEREST_AIRFLOW_PORT", "9000")
    second = local_airflow_env()
    assert _ports(second) == {9000, 9001, 9002}
    assert second["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:9000"
    assert not _ports(default) & _ports(second)  # two instances do not clash


def test_each_port_can_be_set_on_its_own_and_airflow_settings_win(clean_env):
    clean_env.setenv("INTEREST_AIRFLOW_LOG_SERVER_PORT", "7001")
    clean_env.setenv("INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT", "7005")
    assert _ports(local_airflow_env()) == {8080, 7001, 7005}
    clean_env.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "7777")
    assert local_airflow_env()["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "7777"


def test_local_env_gives_the_processes_the_ports_and_a_busy_timeout(clean_env, tmp_path):
    clean_env.setenv("INTEREST_DATA_DIR", str(tmp_path))
    clean_env.delenv("AIRFLOW_HOME", raising=False)
    clean_env.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    clean_env.setenv("INTEREST_AIRFLOW_PORT", "9100")
    env = airflow_local.local_env()
    assert _ports(env) == {9100, 9101, 9102}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("airflow.db?timeout=60")


def _wal_engine(path: Path):
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 5})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record):  # as Airflow sets its SQLite metadata DB up
        dbapi_connection.execute("pragma journal_mode=wal")

    with engine.begin() as con:
        con.execute(text("create table runs (id integer primary key, name text)"))
    return engine


def _other_writer(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """Another process's connection (the scheduler's, say)."""
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


def test_a_savepoint_outside_a_transaction_loses_to_a_commit_and_commits_alone(tmp_path):
    """What `airflow backfill create` met on SQLite (each run is made inside begin_nested)."""
    path = tmp_path / "airflow.db"
    engine = _wal_engine(path)
    other = _other_writer(path)
    with Session(engine) as session:
        with session.begin_nested():  # SAVEPOINT: starts a deferred SQLite transaction
            session.execute(text("select count(*) from runs")).all()  # pins a read snapshot
            session.execute(text("insert into runs (name) values ('run 1')"))
        # releasing the outermost savepoint committed: run 1 is visible, and runnable, alone
        assert other.execute("select count(*) from runs").fetchone() == (1,)
        with pytest.raises(OperationalError) as failure:
            with session.begin_nested():
                session.execute(text("select count(*) from runs")).all()
                other.execute("insert into runs (name) values ('scheduler')")  # commits
                session.execute(text("insert into runs (name) values ('run 2')"))
    # "database is locked" at once: waiting (the 5 s busy timeout) could not help
    assert "database is locked" in str(failure.value)
    assert failure.value.orig.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT"
    other.close()
    engine.dispose()


def test_immediate_transactions_take_the_write_lock_first_and_commit_once(tmp_path):
    path = tmp_path / "airflow.db"
    engine = _wal_engine(path)
    impatient = _other_writer(path, timeout=0.1)
    with airflow_local.immediate_transactions(engine):
        with Session(engine) as session:
            for n in (1, 2):
                with session.begin_nested():
                    session.execute(text("select count(*) from runs")).all()
                    # the lock is ours from the transaction's start: another writer waits
                    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                        impatient.execute("insert into runs (name) values ('scheduler')")
                    session.execute(text("insert into runs (name) values (:n)"), {"n": f"run {n}"})
            # savepoints released, nothing committed yet: all runs or none
            assert impatient.execute("select count(*) from runs").fetchone() == (0,)
            session.commit()
        assert impatient.execute("select name from runs order by id").fetchall() == [
            ("run 1",), ("run 2",),
        ]
    # afterwards the engine is back to pysqlite's own transactions: a read takes no lock
    with Session(engine) as session:
        session.execute(text("select count(*) from runs")).all()
        impatient.execute("insert into runs (name) values ('scheduler')")
        session.commit()
    impatient.close()
    engine.dispose()


def test_a_scheduler_whose_process_is_gone_is_dead(monkeypatch, tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path)}
    monkeypatch.setattr(airflow_local, "_pid", lambda env, component: None)
    monkeypatch.setattr(airflow_local, "scheduler_heartbeat_age", lambda: 1.0)
    problem = airflow_local.scheduler_problem(env, heartbeat_timeout=120)
    assert problem.startswith("the Airflow scheduler is not running (its process is gone")
    assert str(tmp_path / "logs" / "processes" / "scheduler.log") in problem


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (5.0, None),
        (119.0, None),
        (600.0, "has not heartbeated for 600s (limit 120s"),
        (None, "has no running job in the metadata DB"),
    ],
)
def test_a_running_scheduler_is_dead_when_its_heartbeat_is_too_old(
    monkeypatch, tmp_path, age, expected
):
    monkeypatch.setattr(airflow_local, "_pid", lambda env, component: 4242)
    monkeypatch.setattr(airflow_local, "scheduler_heartbeat_age", lambda: age)
    problem = airflow_local.scheduler_problem({"AIRFLOW_HOME": str(tmp_path)}, 120)
    if expected is None:
        assert problem is None
    else:
        assert "(pid 4242)" in problem and expected in problem


def test_a_long_wait_prints_progress_lines_and_ends_with_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(airflow_local, "PROGRESS_EVERY", 0.0)
    calls = iter([["the api-server"], ["a scheduler heartbeat"], []])
    airflow_local.wait_for("airflow start", lambda: next(calls), timeout=60, poll=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("airflow start: waiting for the api-server (")
    assert lines[1].startswith("airflow start: waiting for a scheduler heartbeat (")
    with pytest.raises(TimeoutError, match=r"still waiting for x after 0s; see the logs"):
        airflow_local.wait_for("airflow start", lambda: ["x"], timeout=0, hint="see the logs")


def test_stop_can_end_just_the_components_one_caller_started(monkeypatch, tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    for component in airflow_local.COMPONENTS:
        (airflow_local._run_dir(env) / f"{component}.pid").write_text("4242")
    signalled = []
    monkeypatch.setattr(airflow_local, "_pid", lambda env, component: 4242)
    monkeypatch.setattr(airflow_local, "_signal_group", lambda pid, sig: signalled.append(pid))
    monkeypatch.setattr(airflow_local, "_alive", lambda pid: False)
    assert airflow_local.stop(env, only=["scheduler"]) == ["scheduler"]
    assert signalled == [4242]
    assert sorted(p.stem for p in airflow_local._run_dir(env).glob("*.pid")) == sorted(
        set(airflow_local.COMPONENTS) - {"scheduler"}
    )
