"""What the stand-in's QGIS container does with a job: `qgis_job.py TYPE PROJECT_ID`.

The job comes from the environment (JOB_ID, STANDIN_SECONDS, STANDIN_FEEDBACK), as upstream's QGIS
container gets its job from the API rather than from /io. Only the result goes to /io: feedback.json
(and, for delta_apply, the feedback of each delta read from /io/deltafile.json). A container whose /io
the worker cannot see therefore works, exits 0, and the worker finds no feedback.
"""

import json
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # PID 1: `docker stop` ends the work at once

job_type, project_id = sys.argv[1], sys.argv[2]
qgis_version = os.environ.get("STANDIN_QGIS_VERSION", "3.40")
print(f"QGIS {qgis_version} job {job_type} for project {project_id} started", flush=True)
time.sleep(float(os.environ.get("STANDIN_SECONDS", "1")))
outputs = {"qgis_version": f"{qgis_version}-standin"}
if job_type == "delta_apply":
    try:
        with open("/io/deltafile.json") as fh:
            deltas = json.load(fh)["deltas"]
    except (OSError, ValueError, KeyError):
        deltas = []
    outputs["apply_deltas"] = {
        "delta_feedback": [{"delta_id": d.get("uuid"), "status": "status_applied", "modified_pk": None} for d in deltas]
    }
if os.environ.get("STANDIN_FEEDBACK", "1") != "0":
    with open("/io/feedback.json", "w") as fh:
        json.dump({"feedback_version": "2.0", "outputs": outputs, "type": job_type}, fh)
print(f"QGIS job {job_type} done", flush=True)
