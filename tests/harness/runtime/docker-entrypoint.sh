#!/bin/bash
# Entrypoint of the stand-in's app and worker images: wait for PostgreSQL (at most 30 s,
# every 2 s, as upstream's entrypoint does), then run the command whatever happened.
set -u
python3 /opt/standin/app/wait_for_postgres.py
exec "$@"
