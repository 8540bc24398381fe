"""What the stand-in's QGIS container does with a job: read /io/job.json, work, write feedback."""

import json
import sys
import time

with open(sys.argv[1]) as fh:
    job = json.load(fh)
print(f"QGIS job {job['type']} for project {job['project_id']} started", flush=True)
time.sleep(float(job.get("seconds", 1)))
with open("/io/feedback.json", "w") as fh:
    json.dump({"feedback_version": "2.0", "outputs": {"qgis_version": "3.40-standin"}, "type": job["type"]}, fh)
print(f"QGIS job {job['type']} done", flush=True)
