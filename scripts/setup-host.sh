#!/usr/bin/env bash
# Make this host able to run the collection's tests: a Docker engine, the compose v2
# plugin, debootstrap, promtool, graphviz, openssh-server and sudo. Idempotent: every step checks first and
# does nothing when the host already has what it needs.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }
is_debian() { [ -r /etc/os-release ] && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; }

apt_install() {
  is_root || die "need to install $* but not running as root; run 'sudo make setup' or install $* yourself"
  is_debian || die "need $* but this is not Debian/Ubuntu; install $* with your system's package manager"
  if [ ! -f /var/lib/apt/periodic/fibreflow-updated ] || [ -n "$(find /var/lib/apt/periodic/fibreflow-updated -mmin +720 2>/dev/null)" ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/fibreflow-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_docker_engine() {
  if docker info >/dev/null 2>&1; then
    log "docker engine: reachable ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    return
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "docker engine: installing docker.io"
    apt_install docker.io iptables ca-certificates
  fi
  is_root || die "the Docker engine is installed but not running and we are not root; start it (systemctl start docker) or ask an administrator"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    log "docker engine: starting through systemd"
    systemctl enable --now docker
  else
    log "docker engine: no systemd here, starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "docker engine: up"; return; }
    sleep 1
  done
  tail -n 20 /var/log/dockerd.log >&2 || true
  die "dockerd did not answer within 60 s; see /var/log/dockerd.log"
}

ensure_compose_v2() {
  if docker compose version >/dev/null 2>&1; then
    log "compose: $(docker compose version --short 2>/dev/null)"
    return
  fi
  is_root || die "'docker compose' (v2) is missing; install the docker-compose-plugin package or ask an administrator"
  is_debian || die "'docker compose' (v2) is missing; install the compose v2 plugin for your distribution"
  log "compose: fetching docker-compose v2 from Debian trixie (without adding it to the system's sources)"
  local work; work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives" -o APT::Get::List-Cleanup=0)
  aptopts+=(-o APT::Sandbox::User=root)
  apt-get "${aptopts[@]}" update -qq
  (cd "$work" && apt-get "${aptopts[@]}" download docker-compose >/dev/null)
  dpkg -x "$work"/docker-compose_*.deb "$work/root"
  install -D -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$work"
  docker compose version >/dev/null 2>&1 || die "compose plugin installed but 'docker compose version' still fails"
  log "compose: $(docker compose version --short)"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return
  log "debootstrap: installing"
  apt_install debootstrap
}

# With shellcheck installed, `make sanity` (ansible-test) check the shell scripts too; without it that test is skipped.
ensure_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return
  if is_root && is_debian; then
    log "shellcheck: installing"
    apt_install shellcheck
  else
    log "shellcheck: not installed; ansible-test sanity will skip its shellcheck test"
  fi
}

# promtool (Debian's prometheus package) checks and unit-tests the alert rules in prometheus/ (make test-prometheus).
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return
  log "promtool: installing prometheus (its service is not started)"
  apt_install prometheus
  # the package enables its own service; these test machines only need the promtool binary
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# Graphviz draws docs/pictures/playbooks.svg from its source docs/pictures/playbooks.dot (make docs).
ensure_graphviz() {
  command -v dot >/dev/null 2>&1 && return
  log "graphviz: installing"
  apt_install graphviz
}

# The SSH layer (tests/integration/test_ssh_fleet.py) starts its own sshd and becomes root through sudo.
ensure_sshd_sudo() {
  command -v /usr/sbin/sshd >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && return
  log "openssh-server, sudo: installing (for the SSH test layer, which starts an sshd of its own)"
  apt_install openssh-server sudo
}

ensure_docker_engine
ensure_compose_v2
ensure_debootstrap
ensure_shellcheck
ensure_promtool
ensure_graphviz
ensure_sshd_sudo
