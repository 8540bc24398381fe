#!/usr/bin/env bash
# The troubleshooting field guide's start-up sequence, typed by an operator in the project directory:
#   docker compose up -d db; sleep 10; docker compose up -d app memcached; docker compose up -d worker_wrapper
# bench/bench.py times it against a converged `playbooks/site.yml`. Usage: bench/manual_sequence.sh PROJECT_DIR
set -euo pipefail
cd "${1:?usage: bench/manual_sequence.sh PROJECT_DIR}"
docker compose up -d db
sleep 10
docker compose up -d app memcached
docker compose up -d worker_wrapper
