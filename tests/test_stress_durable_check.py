"""The stress checker's durability rules, on hand-made observations (pure code, no processes):
a task that died with a SIGKILLed server is told apart from one that was lost, and is accepted
only when the server it names was SIGKILLed by the harness after the task started."""

from stress.harness import durable as harness_durable

WL = "django_tasks_shared.exceptions.WorkerLost"
KILL = {"pid": 101, "signal": "kill", "t": 1000.0, "new_pid": 102}
TERM = {"pid": 102, "signal": "term", "t": 2000.0, "new_pid": 103}
CONFIG = {"state_dir": "/s", "fsync": "everysec"}


def died_with(pid, started_at=999.0, w="sleep"):
    return {"w": w, "status": "FAILED", "err": WL, "started_at": started_at,
            "msg": f"{WL}: the task server (pid {pid}) died while this task ran; it was not "
                   f"run again"}


def state(interrupted=0):
    return {"dir": "/s", "restored": {"pending": 5, "results": 7, "interrupted": interrupted}}


def test_server_victim_reads_the_dead_servers_pid_and_nothing_else():
    assert harness_durable.server_victim(died_with(101)) == 101
    worker_sigkill = dict(died_with(101), msg=f"{WL}: worker w1 (pid 7) killed by signal SIGKILL")
    assert harness_durable.server_victim(worker_sigkill) is None
    assert harness_durable.server_victim({"status": "SUCCESSFUL", "err": None}) is None
    # lost with the server: the client never got a record, so there is nothing to read
    assert harness_durable.server_victim({"w": "noop", "how": "lost-with-server"}) is None


def test_victim_must_name_a_server_we_sigkilled_after_it_started():
    restarts = [KILL, TERM]
    assert harness_durable.victim_problem("a", died_with(101), restarts) is None
    assert "SIGTERM" in harness_durable.victim_problem("b", died_with(102), restarts)
    assert "not one we restarted" in harness_durable.victim_problem("c", died_with(55), restarts)
    late = harness_durable.victim_problem("d", died_with(101, started_at=1001.0), restarts)
    assert "after that server was SIGKILLed" in late


def test_check_matches_the_restored_interrupted_count_and_the_ledger():
    tasks = {"a": died_with(101), "b": dict(died_with(101), w="noop")}
    runs = {"a": [{"pid": 9, "server_pid": 101}]}
    states = {101: state(), 102: state(interrupted=2), 103: state()}
    ok, detail, bad, figures = harness_durable.check(CONFIG, tasks, runs, [KILL, TERM], states)
    assert ok, bad
    assert figures["interrupted_by_server_kill"] == 2
    assert {i["id"]: i["ran"] for i in figures["interrupted"]} == {"a": 1, "b": 0}
    assert "2 task(s) were RUNNING at a server SIGKILL" in detail

    # The server after the SIGKILL restored 3 interrupted tasks; the clients saw 2.
    states[102] = state(interrupted=3)
    ok, _, bad, _ = harness_durable.check(CONFIG, tasks, runs, [KILL, TERM], states)
    assert not ok and "restored 3 interrupted" in bad[0]

    # Its worker wrote the line as an orphan, after the SIGKILL (parent: init): still once.
    states[102] = state(interrupted=2)
    runs["a"] = [{"pid": 9, "server_pid": 1}]
    assert harness_durable.check(CONFIG, tasks, runs, [KILL, TERM], states)[0]

    # Run again by the next server: a second life after WorkerLost is a double run.
    runs["a"] = [{"pid": 10, "server_pid": 102}]
    ok, _, bad, _ = harness_durable.check(CONFIG, tasks, runs, [KILL, TERM], states)
    assert not ok and "ledger" in bad[0]
    runs["a"] = [{"pid": 9, "server_pid": 101}, {"pid": 10, "server_pid": 1}]
    assert not harness_durable.check(CONFIG, tasks, runs, [KILL, TERM], states)[0]


def test_check_fails_a_server_without_the_state_dir():
    ok, _, bad, _ = harness_durable.check(CONFIG, {}, {}, [], {101: None})
    assert not ok and "without a STATE_DIR" in bad[0]


def test_a_unique_task_seen_by_several_clients_is_one_server_victim():
    """Clients enqueueing one @unique key get the same task: its WorkerLost at a server SIGKILL
    counts once against the restored "interrupted", not once per client."""
    from stress.harness.durable import SERVER_DIED
    from stress.harness.flows import server_victims

    msg = "the task server (pid 4242) died while this task ran; it was not run again"
    assert SERVER_DIED.search(msg)
    final = {"status": "FAILED", "err": "django_tasks_shared.exceptions.WorkerLost", "msg": msg}
    outputs = [{"flows": {"final": {"a" * 32: final}}}, {"flows": {"final": {"a" * 32: final}}},
               {"flows": {"final": {"b" * 32: final}}}, None]
    assert server_victims(outputs) == {4242: 2}
