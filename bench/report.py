"""The report of the benchmarks: RESULTS.md rendered from the raw results (tests/output/bench/results.json).

Pure functions of the results dict: ``bench.py --render-only RESULTS_JSON`` rewrites a report without running
anything.
"""

from __future__ import annotations

import re
from typing import Any

from measure import median, ratio


def fmt_s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def fmt_list(values: list[Any]) -> str:
    return "/".join(str(v) for v in values) or "n/a"


def fmt_x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def timing_row(label: str, s: dict[str, Any], base: float | None) -> list[Any]:
    return [label, fmt_s(s["median"]), fmt_s(s["min"]), fmt_s(s["max"]), s["n"], fmt_x(ratio(s["median"], base))]


TIMING_HEADER = ["Command", "Median", "Min", "Max", "Runs"]


def render_meta(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    out = [
        "# Benchmark results",
        "",
        "One complete run of `bench/bench.py` (see [README.md](README.md) for what each step does and how to repeat"
        " it). The machine is shared with other work and has 2 cores: compare the **ratios**; absolute times move"
        " with the load. Times are wall-clock medians of runs made alternately (round robin) in one session.",
        "",
        f"- Date: {meta['started']} (the run took {meta['wall_min']:.1f} min)",
        f"- Command: `{meta['command']}`",
    ]
    names = {"cpu": "CPU", "memory": "Memory", "os": "OS", "load": "Load average (1/5/15 min)"}
    for key, value in meta["machine"].items():
        extra = f" at the start, {meta['load_end']} at the end" if key == "load" else ""
        out.append(f"- {names.get(key, key)}: {value}{extra}")
    out += [f"- {key}: {value}" for key, value in meta["versions"].items()]
    out += [f"- Rounds per command: {', '.join(f'{k} {v}' for k, v in results['rounds'].items())}", ""]
    return out


def render_diagnose(d: dict[str, Any]) -> list[str]:
    floor = d["empty.yml (floor)"]["median"]
    diag = d["diagnose.yml"]["median"]
    comm = d["community_docker_diagnose.yml"]["median"]
    one_call = d["ad-hoc qfc_sync_facts"]["median"]
    labels = (
        "empty.yml (floor)",
        "ad-hoc ping",
        "ad-hoc qfc_sync_facts",
        "diagnose.yml",
        "community_docker_diagnose.yml",
    )
    rows = [[*timing_row(label, d[label], floor), d[label]["rcs"]] for label in labels]
    speedup = ratio(comm, diag)
    community_ok = "/".join(str(h["ok"]) for h in d["community_tasks"].values()) or "?"
    community_items = d.get("community_items", "?")
    return [
        "## 1. Diagnose a healthy stand-in",
        "",
        *table([*TIMING_HEADER, "vs floor", "exit codes"], rows),
        f"- community.docker playbook / diagnose.yml: **{fmt_x(speedup)}**"
        f" (target at least 4x: {verdict(speedup >= 4 if speedup else None)}).",
        f"- diagnose.yml minus the floor: **{fmt_s(diag - floor)}**; one module call (ad-hoc qfc_sync_facts minus"
        f" the floor): {fmt_s(one_call - floor)}; diagnose.yml / ad-hoc qfc_sync_facts: {fmt_x(ratio(diag, one_call))}"
        f" (target diagnose.yml no more than the floor plus one module call, 10 % noise allowed:"
        f" {verdict(diag <= one_call * 1.10)}).",
        f"- community.docker playbook minus the floor: {fmt_s(comm - floor)}, that is"
        f" {fmt_x(ratio(comm - floor, diag - floor))} the work of diagnose.yml above the floor.",
        f"- Work inside the module (its `duration_s`, median): {fmt_s(d['module_duration_s'], 3)};"
        f" Docker API calls {d['module_api_calls']}, SQL round trips {d['module_round_trips']}.",
        f"- diagnose.yml found {', '.join(d['diagnose_problems']) or '?'} problem(s) on the stand-in; the"
        f" community.docker playbook ran {community_ok} tasks, one of them docker_container_info {community_items}"
        " times (once per container of the project).",
        "",
    ]


def render_site(s2: dict[str, Any]) -> list[str]:
    manual = s2["manual_sequence.sh"]["median"]
    labels = ("site.yml", "site.yml --skip-tags verify", "manual_sequence.sh", "diagnose.yml")
    rows = [[*timing_row(label, s2[label], manual), s2[label].get("changed", ""), s2[label]["rcs"]] for label in labels]
    changed = s2["site.yml"]["changed"] + s2["site.yml --skip-tags verify"]["changed"]
    site, bare = s2["site.yml"]["median"], s2["site.yml --skip-tags verify"]["median"]
    first = s2["first_run"]
    vs_facts = ratio(bare, s2["diagnose.yml"]["median"])
    return [
        "## 2. Converged site.yml against the field guide's manual sequence",
        "",
        *table([*TIMING_HEADER, "vs manual sequence", "changed=", "exit codes"], rows),
        f"- Converged re-runs report `changed=0`: {verdict(all(c == 0 for c in changed))} ({changed}).",
        f"- site.yml / manual sequence: **{fmt_x(ratio(site, manual))}**; without its verification (the probe job"
        f" through the worker): **{fmt_x(ratio(bare, manual))}**. The manual sequence is mostly the guide's fixed"
        f" `sleep 10`: its commands take about {fmt_s(manual - 10)}, and it checks nothing (no readiness, no worker"
        " configuration, no sync proof).",
        f"- Converged site.yml without verification / diagnose.yml: {fmt_x(vs_facts)} (design target: a converged"
        f" re-run costs little more than the facts call, read here as at most 2x: {verdict(vs_facts <= 2)}).",
        f"- The first, converging run of site.yml on the fresh stand-in: {fmt_s(first['seconds'])},"
        f" changed={first['recap'].get('changed') if first['recap'] else '?'}.",
        *render_profile(s2.get("profile")),
        "",
    ]


def render_profile(profile: dict[str, Any] | None) -> list[str]:
    if not profile or not profile["tasks"]:
        return []
    recap = profile["recap"] or {}
    out = [
        f"- Where a converged `site.yml --skip-tags verify` spends its time (one extra run with"
        f" ansible.posix.profile_tasks, {fmt_s(profile['seconds'])}, ok={recap.get('ok')}"
        f" skipped={recap.get('skipped')}; the slowest tasks):",
        "",
    ]
    out += [f"  - {seconds:.2f} s {task}" for task, seconds in profile["tasks"]]
    return out


def render_repair(rep: dict[str, Any]) -> list[str]:
    out = [
        "## 3. Time to repair each worker fault (images present)",
        "",
        "From the injected fault (`tests/harness/standin break FAULT` on the stack with the files of a fresh"
        " install) to `playbooks/verify.yml` passing: `ansible-playbook playbooks/site.yml --skip-tags verify`"
        " (the repair), then `ansible-playbook playbooks/verify.yml` (status, login, a probe job that the worker"
        " must finish). site.yml run whole verifies too; the split only keeps the probe job from running twice.",
        "",
    ]
    rows = []
    for fault, r in rep.items():
        problems = sorted({p for row in r["rounds"] for p in row["problems"]})
        images = all(row["images_present"] for row in r["rounds"])
        logs = [row["log"] for row in r["rounds"] if "log" in row]
        rows.append(
            [
                fault,
                fmt_s(r["median"], 1),
                fmt_s(r["worst"], 1),
                fmt_s(r["site_median"], 1),
                fmt_s(r["verify_median"], 1),
                f"{r['repaired']}/{len(r['rounds'])}" + (f" (logs: {', '.join(logs)})" if logs else ""),
                ", ".join(problems) or "none",
                "yes" if images else "NO",
            ]
        )
    header = ["Fault", "Median", "Worst", "repair (median)", "verify.yml (median)", "repaired", "reported", "images"]
    out += table(header, rows)
    ok_rounds = [row for r in rep.values() for row in r["rounds"] if row["site_rc"] == 0 and row["verify_rc"] == 0]
    every = [row["total"] for row in ok_rounds]
    all_ok = len(ok_rounds) == sum(len(r["rounds"]) for r in rep.values())
    worst = max(every) if every else None
    out += [
        f"- Over all faults: median {fmt_s(median(every), 1)}, worst {fmt_s(worst, 1)} (target: well under a"
        f" minute: {verdict(all_ok and worst is not None and worst < 60)}).",
        "- `reported` lists the problem codes that site.yml printed before repairing (evidence that the fault was"
        " there).",
    ]
    if "worker-hand-started" in rep:
        out.append(
            "- worker-hand-started is repaired with `-e qfieldcloud_worker_remove_hand_started=true`"
            " (by default the role only reports the hand-started container)."
        )
    return [*out, ""]


def render_fleet(fl: dict[str, Any]) -> list[str]:
    rows = []
    for n in ("1", "4", "8"):
        s = fl[n]
        memory = [f"{s['peak_rss_mib']:.0f} MiB", f"{s['peak_pss_mib']:.0f} MiB"]
        rows.append([*timing_row(n, s, None)[:5], *memory, s["failed_hosts"]])
    return [
        "## 4. Fleet: diagnose.yml over several stacks on one engine",
        "",
        "One inventory host per stand-in stack, `ansible_connection: local`, `--forks 8`. Peak memory: the highest"
        " sum over the `ansible-playbook` process and all its descendants, sampled from /proc every 50 ms, of RSS"
        " (what the brief asks for; pages that forked workers share are counted once per process) and of PSS"
        " (`/proc/PID/smaps_rollup`, shared pages split between their users: closer to the real use).",
        "",
        *table(["Hosts", "Median wall", "Min", "Max", "Runs", "Peak RSS", "Peak PSS", "failed hosts"], rows),
        f"- Time per extra host: **{fmt_s(fl['per_extra_host_s'])}** from 1 to 8 hosts"
        f" ({fmt_s(fl['per_extra_host_s_1_to_4'])} from 1 to 4, {fmt_s(fl['per_extra_host_s_4_to_8'])} from 4 to"
        f" 8); 8 hosts / 1 host: {fmt_x(ratio(fl['8']['median'], fl['1']['median']))}.",
        f"- Memory per extra host: {fl['per_extra_host_mib']:.0f} MiB of summed RSS,"
        f" {fl['per_extra_host_pss_mib']:.0f} MiB of summed PSS.",
        "- All stacks share one Docker engine and one 2-core machine: each extra host adds a module process on the"
        " same CPUs, so the cost per host here is an upper bound for hosts that run their own modules.",
        "",
    ]


def plan_notes(plan: str) -> list[str]:
    """What a queue plan shows, in words, for the patterns that make it grow with the queue."""
    notes = []
    cte = re.search(r"CTE (\w+)\n\s+->  Seq Scan on core_job\b", plan)
    if cte:
        uses = len(re.findall(rf"CTE Scan on {cte[1]}\b", plan))
        notes.append(
            f"  - The CTE `{cte[1]}` copies all of core_job (one sequential scan, every row materialised because it"
            f" is referenced {uses} times), and each subquery then scans that copy: none of core_job's indexes"
            " (status, created_at, pkey) can be used for the status filters, the oldest pending job or the job ids."
        )
    spill = re.search(r"temp read=(\d+) written=(\d+)", plan)
    if spill:
        notes.append(
            f"  - The materialised rows exceed work_mem and spill to disk (temp read={spill[1]} written={spill[2]}"
            " blocks)."
        )
    if "id)::text = ANY" in plan:
        notes.append("  - `id::text = ANY(...)` cannot use the primary key; `id = ANY(%(job_ids)s::uuid[])` can.")
    return notes


def render_queue(q: dict[str, Any]) -> list[str]:
    out = [
        "## 5. Queue size: 10 against 100,000 pending jobs",
        "",
        "Pending jobs inserted into the stand-in's `core_job` with one `INSERT ... SELECT ... generate_series`"
        " (the worker stopped first, so that nothing claims them), then `ANALYZE core_job`. `read_database` is"
        " `plugins/module_utils/queue.py` called in the benchmark's own process with `cursor.execute` wrapped to"
        " count statements; the module run is the ad-hoc `qfc_sync_facts` call (with Ansible's start-up).",
        "",
    ]
    rows = []
    for n in ("10", "100000"):
        r = q[n]
        rows.append(
            [
                f"{int(n):,}",
                f"{r['rows_in_core_job']:,}",
                f"{r['read_database']['median'] * 1000:.1f} ms",
                fmt_list(r["statements"]),
                fmt_s(r["module"]["median"]),
                fmt_s(r["module_duration_s"], 3),
                fmt_s(r["module_db_duration_s"], 3),
                fmt_list(r["module_round_trips"]),
                f"{r['pending_seen']} / {r['claimable_seen']}",
            ]
        )
    header = ["Pending", "core_job rows", "read_database", "statements", "module run", "module's work"]
    out += table([*header, "its DB part", "module round_trips", "pending / claimable seen"], rows)
    small, big = q["10"], q["100000"]
    read_ratio = ratio(big["read_database"]["median"], small["read_database"]["median"])
    module_ratio = ratio(big["module"]["median"], small["module"]["median"])
    work_ratio = ratio(big["module_duration_s"], small["module_duration_s"])
    db_ratio = ratio(big["module_db_duration_s"], small["module_db_duration_s"])
    out += [
        f"- SQL statements per read: {fmt_list(small['statements'])} with 10, {fmt_list(big['statements'])} with"
        f" 100,000: flat {verdict(small['statements'] == big['statements'])}.",
        f"- 100,000 / 10 pending: read_database **{fmt_x(read_ratio)}**, the module's DB part {fmt_x(db_ratio)},"
        f" the module's own work (`duration_s`) **{fmt_x(work_ratio)}**, the whole ad-hoc module run"
        f" {fmt_x(module_ratio)} (Ansible's start-up hides most of it). Run time flat, judged on the module's own"
        f" work, within 25 %: {verdict(work_ratio is not None and work_ratio <= 1.25)}.",
    ]
    scans = [label for label, s in big["seq_scans"].items() if "core_job" in s]
    if scans:
        out.append(
            f"- **Sequential scan of core_job with 100,000 rows** in: {', '.join(scans)}. The database time grows"
            " with the queue; see the plans below."
        )
        out += plan_notes(big["plans"].get("queue (round trip 2)", ""))
    else:
        out.append("- No sequential scan of core_job in the plans with 100,000 rows.")
    out.append("")
    for n in ("100000", "10"):
        for label, plan in q[n]["plans"].items():
            scans_here = ", ".join(q[n]["seq_scans"][label]) or "none"
            out += [
                f"<details><summary>EXPLAIN (ANALYZE, BUFFERS) with {int(n):,} pending jobs: {label}"
                f" (sequential scans: {scans_here})</summary>",
                "",
                "```",
                plan,
                "```",
                "</details>",
                "",
            ]
    return out


def headline(results: dict[str, Any]) -> list[str]:
    """The few figures quoted in bench/README.md."""
    out = []
    d = results.get("diagnose")
    if d:
        diag, comm = d["diagnose.yml"]["median"], d["community_docker_diagnose.yml"]["median"]
        floor, one = d["empty.yml (floor)"]["median"], d["ad-hoc qfc_sync_facts"]["median"]
        out.append(
            f"- Diagnose: diagnose.yml {fmt_s(diag)} against {fmt_s(comm)} for the community.docker playbook"
            f" (**{fmt_x(ratio(comm, diag))} faster**); floor (empty playbook) {fmt_s(floor)}, bare qfc_sync_facts"
            f" call {fmt_s(one)} (diagnose.yml / bare call {fmt_x(ratio(diag, one))}); the module's own work"
            f" {fmt_s(d['module_duration_s'], 3)}."
        )
    s2 = results.get("site")
    if s2:
        manual = s2["manual_sequence.sh"]["median"]
        site, bare = s2["site.yml"]["median"], s2["site.yml --skip-tags verify"]["median"]
        out.append(
            f"- Converged site.yml (changed=0): {fmt_s(site)} with its probe-job verification, {fmt_s(bare)} without,"
            f" against {fmt_s(manual)} for the field guide's manual sequence (ratios {fmt_x(ratio(site, manual))}"
            f" and {fmt_x(ratio(bare, manual))}); without verification it costs"
            f" {fmt_x(ratio(bare, s2['diagnose.yml']['median']))} diagnose.yml."
        )
    rep = results.get("repair")
    if rep:
        every = [
            row["total"] for r in rep.values() for row in r["rounds"] if row["site_rc"] == 0 and row["verify_rc"] == 0
        ]
        rounds = sum(len(r["rounds"]) for r in rep.values())
        slowest = max(rep, key=lambda f: rep[f]["worst"] or 0)
        out.append(
            f"- Repair, from broken to verify.yml passing: median {fmt_s(median(every), 1)} over {len(rep)} worker"
            f" faults, worst {fmt_s(max(every) if every else None, 1)} ({slowest}); {len(every)}/{rounds} rounds"
            " repaired."
        )
    fl = results.get("fleet")
    if fl:
        out.append(
            f"- Fleet: diagnose.yml over 1 / 4 / 8 stacks {fmt_s(fl['1']['median'])} / {fmt_s(fl['4']['median'])} /"
            f" {fmt_s(fl['8']['median'])}, **{fmt_s(fl['per_extra_host_s'])} per extra host**; peak memory"
            f" {fl['1']['peak_pss_mib']:.0f} / {fl['4']['peak_pss_mib']:.0f} / {fl['8']['peak_pss_mib']:.0f} MiB PSS"
            f" ({fl['1']['peak_rss_mib']:.0f} / {fl['4']['peak_rss_mib']:.0f} / {fl['8']['peak_rss_mib']:.0f} MiB"
            " summed RSS)."
        )
    q = results.get("queue")
    if q:
        small, big = q["10"], q["100000"]
        scans = [label for label, s in big["seq_scans"].items() if "core_job" in s]
        ms_small, ms_big = small["read_database"]["median"] * 1000, big["read_database"]["median"] * 1000
        out.append(
            f"- Queue: {fmt_list(small['statements'])} / {fmt_list(big['statements'])} SQL statements with 10 /"
            " 100,000 pending jobs;"
            f" read_database {ms_small:.0f} ms / {ms_big:.0f} ms ({fmt_x(ratio(ms_big, ms_small))}), the module's own"
            f" work {fmt_s(small['module_duration_s'], 3)} / {fmt_s(big['module_duration_s'], 3)}"
            f" ({fmt_x(ratio(big['module_duration_s'], small['module_duration_s']))}), the ad-hoc module call"
            f" {fmt_s(small['module']['median'])} / {fmt_s(big['module']['median'])}"
            f" ({fmt_x(ratio(big['module']['median'], small['module']['median']))})"
            + (f"; sequential scan of core_job in the {', '.join(scans)} statement." if scans else "; no seq scan.")
        )
    return out


def render(results: dict[str, Any]) -> str:
    out = render_meta(results)
    if headline(results):
        out += ["## Headline", "", *headline(results), ""]
    for key, fn in (
        ("diagnose", render_diagnose),
        ("site", render_site),
        ("repair", render_repair),
        ("fleet", render_fleet),
        ("queue", render_queue),
    ):
        if results.get(key):
            out += fn(results[key])
    if results.get("failed_steps"):
        out += ["## Steps that failed", "", *(f"- {f}" for f in results["failed_steps"]), ""]
    return "\n".join(out)
