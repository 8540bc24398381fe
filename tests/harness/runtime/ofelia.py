"""Stand-in for ofelia v0.3 (`daemon --docker`): read the `ofelia.job-exec.*` labels of the project's
containers ONCE at start, remember each job's container by NAME, then `exec` in that name on schedule.

Like the real ofelia, labels added or changed later are not seen until ofelia itself restarts, but a
container recreated under the same name (compose keeps `<project>-app-1` when it recreates `app`) keeps its
jobs: the next run execs in the new container. A stopped container makes the run fail ("is not running"), a
removed one gives "No such container". Unlike the real ofelia, only the containers of ofelia's own compose
project are read, so that several stand-in stacks share one engine.
"""

import datetime
import re
import signal
import socket
import sys
import time

import docker


def log(msg: str) -> None:
    print(f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {msg}", flush=True)


def every_seconds(schedule: str) -> float:
    m = re.fullmatch(r"@every\s+(\d+)([smh])", schedule.strip())
    if not m:
        raise ValueError(f"unsupported schedule {schedule!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1: exit at once on docker stop
    client = docker.from_env()
    me = client.containers.get(socket.gethostname())
    project = me.labels.get("com.docker.compose.project")
    jobs = []
    for c in client.containers.list(
        filters={"label": [f"com.docker.compose.project={project}", "ofelia.enabled=true"]}
    ):
        names = {k.split(".")[2] for k in c.labels if k.startswith("ofelia.job-exec.")}
        for name in sorted(names):
            prefix = f"ofelia.job-exec.{name}."
            jobs.append(
                {
                    "name": name,
                    "container_name": c.name,
                    "every": every_seconds(c.labels[prefix + "schedule"]),
                    "command": c.labels[prefix + "command"],
                    "next": time.monotonic() + every_seconds(c.labels[prefix + "schedule"]),
                }
            )
    for job in jobs:
        every = int(job["every"])
        log(f'New job registered "{job["name"]}" - "{job["command"]}" - "@every {every}s" in {job["container_name"]}')
    if not jobs:
        log("No jobs found in the labels of running containers")
    while True:
        now = time.monotonic()
        for job in jobs:
            if now < job["next"]:
                continue
            job["next"] = now + job["every"]
            log(f'[Job "{job["name"]}"] Started - {job["command"]}')
            try:
                res = client.containers.get(job["container_name"]).exec_run(["/bin/sh", "-c", job["command"]])
                state = "Finished" if res.exit_code == 0 else "Failed"
                log(f'[Job "{job["name"]}"] {state} in {job["container_name"]}, exit code {res.exit_code}')
            except docker.errors.NotFound:
                log(f'[Job "{job["name"]}"] Error: No such container: {job["container_name"]}')
            except Exception as exc:  # keep the scheduler alive, as ofelia does
                log(f'[Job "{job["name"]}"] Error: {exc}')
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
