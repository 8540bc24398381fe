#!/usr/bin/env bash
# `make samples`: the real outputs the README shows, taken from a broken stand-in. Writes docs/samples/:
#   diagnose.txt       what `ansible-playbook playbooks/diagnose.yml` prints for a stand-in with two guide faults
#   drift-report.md    the drift report of `bin/qfc-drift-check` (check mode) on the same stand-in
#   drift-report.json  its machine-readable form
# Needs `make setup` first. The stand-in (SAMPLES_NAME, default "sample") is removed afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${SAMPLES_NAME:-sample}
standin=tests/harness/standin
vars=tests/output/standin/$name/standin-vars.yml
out=docs/samples
work=$(mktemp -d)
trap '$standin down --name "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export PATH=$PWD/.venv/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg ANSIBLE_NOCOLOR=1
args=(-i 'localhost,' -c local -e "ansible_python_interpreter=$PWD/.venv/bin/python" -e "@$vars")

$standin up --name "$name" >/dev/null
$standin break worker-not-root --name "$name" >/dev/null
$standin break qgis-image-missing --name "$name" >/dev/null
mkdir -p "$out"
# diagnose.yml fails by design when sync is blocked; the paths of this machine's stand-in are kept as they are
ansible-playbook playbooks/diagnose.yml "${args[@]}" > "$work/diagnose.txt" 2>&1 || true
bin/qfc-drift-check -o "$work/report" -- "${args[@]}" > /dev/null 2>&1 || true
cp "$work/diagnose.txt" "$out/diagnose.txt"
cp "$work/report/drift-report.md" "$out/drift-report.md"
cp "$work/report/drift-report.json" "$out/drift-report.json"
# nothing secret may be in a sample
env_file=tests/output/standin/$name/.env
secrets=$(grep -E '^[A-Z_]*(PASSWORD|SECRET|KEY|TOKEN)[A-Z_]*=' "$env_file" | cut -d= -f2- | grep -E '.{4,}' || true)
secrets+=$'\n'$(sed -n 's/^qfieldcloud_probe_password: //p' "$vars")
while IFS= read -r value; do
  if [ -n "$value" ] && grep -rqF -- "$value" "$out"; then echo "samples: a secret leaked into $out" >&2; exit 1; fi
done <<< "$secrets"
echo "samples: wrote $out/diagnose.txt, $out/drift-report.md, $out/drift-report.json"
