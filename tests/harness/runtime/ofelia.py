"""Stand-in for ofelia (`daemon --docker`): read the `ofelia.job-exec.*` labels of the project's
containers ONCE at start, then run each job in the container it found, on its schedule.

Like the real ofelia, a container recreated later (for example `app` after an image change)
is not picked up again until ofelia itself restarts: its jobs then fail with "No such container".
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
                    "container": c.id,
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
                res = client.containers.get(job["container"]).exec_run(["/bin/sh", "-c", job["command"]])
                state = "Finished" if res.exit_code == 0 else "Failed"
                log(f'[Job "{job["name"]}"] {state} in {job["container_name"]}, exit code {res.exit_code}')
            except docker.errors.NotFound:
                log(f'[Job "{job["name"]}"] Error: No such container: {job["container"][:12]}')
            except Exception as exc:  # keep the scheduler alive, as ofelia does
                log(f'[Job "{job["name"]}"] Error: {exc}')
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
