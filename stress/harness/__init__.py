"""The stress harness (`python -m stress`): many client processes, injected faults, and a
checker that proves nothing was lost, run twice or misreported.

    args.py ──argv──> run.py (this process)
      ├─ server: AUTOSTARTed on a private socket with settings.py (STRESS_ADDRESS and
      │          STRESS_OPTIONS from the environment), or an existing one (--address)
      ├─ Monitor thread (run.py): health + server RSS every 0.25 s
      ├─ Faults (run.py): SIGKILL a worker mid-task; SIGKILL / SIGTERM the server;
      │                   SIGSTOP / SIGCONT it past CONNECT_TIMEOUT (stall.py)
      └─ client.py × M (spawn): enqueue the plan, poll own ids, look up other clients' ids
           └─ tasks.py in the workers: each execution appends a line to a ledger file
    ledger files + client-<n>.json + health samples + the faults injected
      ──> check.py: one function per invariant (durable.py: the --state-dir rules;
                    stall.py: workers live through the stalls)
      ──> report.py: the table ending in "RESULT: PASS" | "RESULT: FAIL"; --json FILE

stress/__main__.py runs run.main(); storm (stress/storm/) starts its server with settings.py too.
"""
