"""Wait for PostgreSQL like upstream's entrypoint: at most 30 s, every 2 s, then go on anyway."""

import sys
import time

import qfcdb

print("Waiting for postgres...", flush=True)
deadline = time.monotonic() + 30
while True:
    try:
        qfcdb.connect(timeout=2).close()
    except Exception as exc:  # psycopg2.OperationalError and missing settings alike
        print("Postgres isn't ready.", flush=True)
        print(str(exc).strip(), flush=True)
        if time.monotonic() >= deadline:
            break
        time.sleep(2)
        continue
    print("Postgres is ready! \u2728 \U0001f485", flush=True)
    break
sys.exit(0)
