#!/usr/bin/env bash
# `make demo`: a stand-in QFieldCloud broken like the troubleshooting guide's five worker issues (plus a pruned
# QGIS image), then the collection's answer: diagnose, site.yml --check --diff, site.yml, verify.yml.
# Needs `make setup` first (make demo does it). DEMO_KEEP=1 keeps the stack; DEMO_NAME picks its name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${DEMO_NAME:-demo}
standin=tests/harness/standin
vars=tests/output/standin/$name/standin-vars.yml
out=tests/output/demo
mkdir -p "$out"
export PATH=$PWD/.venv/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg ANSIBLE_NOCOLOR=1
play=(ansible-playbook -i 'localhost,' -c local -e "ansible_python_interpreter=$PWD/.venv/bin/python" -e "@$vars")
summary=()
t_all=$EPOCHREALTIME
since() { awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $1 }"; }
step() {  # step LABEL LOGFILE COMMAND...: run, keep the log, record the time and the recap
  local label=$1 log=$out/$2 t=$EPOCHREALTIME rc=0
  shift 2
  echo "=== $label"
  "$@" >"$log" 2>&1 || rc=$?
  local recap
  recap=$(grep -A1 '^PLAY RECAP' "$log" | tail -1 | grep -o 'changed=[0-9]*\|failed=[0-9]*' | tr '\n' ' ' || true)
  summary+=("$(printf '%-34s %6ss  rc=%s %s' "$label" "$(since "$t")" "$rc" "$recap")")
  return $rc
}
cleanup() {
  if [ "${DEMO_KEEP:-0}" = 1 ]; then
    echo "demo: kept the stand-in '$name' ($vars); remove it with: $standin down --name $name"
  else
    $standin down --name "$name" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "stand-in up" standin-up.log $standin up --name "$name"
faults=(worker-not-root worker-wrong-db-host worker-port-published qgis-image-missing worker-stopped)
step "break: 5 guide faults + qgis image" break.log bash -c "
  for f in ${faults[*]}; do $standin break \$f --name $name; done
  docker rmi -f $name-worker_wrapper"

# diagnose.yml fails (by design, for cron and AWX) when sync is blocked: that is the expected outcome here.
step "diagnose.yml (expected: blocked)" diagnose.log "${play[@]}" playbooks/diagnose.yml || true
echo "--- problems found, each with its remedy:"
grep -E "^    - '?(CRITICAL|ERROR|WARNING) |^    - '?Remedy:" "$out/diagnose.log" | sed -E "s/^    - '?//; s/'$//" || true

step "site.yml --check --diff" check.log "${play[@]}" playbooks/site.yml --check --diff
echo "--- what a real run would do:"
grep -E "check mode: would|msg: '?would " "$out/check.log" | sed -E "s/^ +(msg: )?'?//" | cut -c1-160 || true

step "site.yml (repair)" site.log "${play[@]}" playbooks/site.yml
step "site.yml again (converged)" site2.log "${play[@]}" playbooks/site.yml
step "verify.yml (a sync job finishes)" verify.log "${play[@]}" playbooks/verify.yml
grep -ho "verify ok (latency [0-9.]* s)" "$out/verify.log" | tail -1 || true

echo "=== summary (logs in $out/)"
printf '%s\n' "${summary[@]}"
echo "total: $(since "$t_all")s"
