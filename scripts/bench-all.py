#!/usr/bin/env python3
"""Every per-layer benchmark in one run, its figures as JSON, the README's tables from
them, and a regression check against the recorded figures.

    scripts/bench-all.py run [--out DIR] [--only SUITE,...] [--quick]
    scripts/bench-all.py tables RESULTS        # the README's tables, as Markdown
    scripts/bench-all.py record RESULTS        # RESULTS becomes benches/results.json,
                                               # and the README's tables are rewritten
                                               # (record benches/results.json: only the latter)
    scripts/bench-all.py check [--fresh RESULTS] [--only SUITE,...] [--no-rerun]

Suites, in the order they run (about 7 minutes in all on a 2-core VM):

    proto, core, node, lmdb, quic   the criterion suites of `benches` (benches/benches/*.rs)
    rtt                             raft-net-quic/benches/rtt.rs: round-trip percentiles
    heartbeat_gap                   raft-net-quic's test heartbeats_keep_flowing_while_a_64_mib_
                                    snapshot_streams, in release: the longest heartbeat gap
    snapshot_latency                raft-storage-lmdb/benches/snapshot_latency.rs, both
                                    durability modes (deferred applies, then synced ones)

`run` builds, waits for the load average to fall below 1 (at most 3 minutes), spins
every core for 10 s (after minutes of idle this VM's first figures came out up to 57%
slow), then measures one criterion bench per `cargo bench` invocation, so every figure has
beside it the 1-minute load average at its start and its end, and "other CPU": the
cores that processes other than the bench used while it ran (from /proc/stat minus
the bench's own CPU time). Load average counts the bench itself; other CPU does not,
so other CPU is what says whether the machine was quiet. Everything is written under
the output directory (default `$CARGO_TARGET_DIR/bench-all/<time>`, or
`target/bench-all/<time>`): results.json, tables.md, one log per bench, criterion's
data. The repository and ../shared are left as they were.

`check` compares a fresh run (or `--fresh RESULTS`) with the recorded figures
(benches/results.json; `--against` another file). A figure more than 20% worse is
measured again once; it is called a regression only if the second measurement is also
more than 20% worse and neither was disturbed (other CPU above 0.25 cores, or a
criterion confidence interval wider than 20% of its median). When a disturbance makes
that impossible to tell, it says so. Exit status: 0 nothing worse, 1 a regression,
3 worse but it cannot tell noise from a regression. It is not part of CI.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
RECORDED = ROOT / "benches" / "results.json"
README = ROOT / "README.md"

CRITERION_SUITES = ["proto", "core", "node", "lmdb", "quic"]
SUITES = CRITERION_SUITES + ["rtt", "heartbeat_gap", "snapshot_latency"]

# A figure this much worse than the recorded one is looked at again.
WORSE = 0.20
# Other processes using more than this many cores while a figure was measured: noisy.
BUSY_CORES = 0.25
# A criterion confidence interval wider than this share of its median: noisy.
WIDE_CI = 0.20


def log(msg):
    print(f"=== {msg} ({datetime.now(timezone.utc):%H:%M:%S})", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_ticks():
    """CPU time spent by everything on the machine (ticks), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    return sum(fields[:3]) + sum(fields[5:8])


def measured(cmd, env=None, log_file=None):
    """Runs `cmd` and returns (stdout + stderr text, conditions) where conditions are the
    load averages at its start and end, the other processes' CPU in cores and the wall
    time. Fails loudly if the command fails."""
    tick = os.sysconf("SC_CLK_TCK")
    load0, busy0 = loadavg(), busy_ticks()
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    wall = time.monotonic() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = (busy_ticks() - busy0) / tick
    own = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
    if log_file:
        with open(log_file, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    conditions = {
        "load": [load0, loadavg()],
        "other_cpu": round(max(0.0, busy - own) / wall, 3) if wall > 0 else 0.0,
        "wall_s": round(wall, 1),
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return proc.stdout, conditions


def figure(suite, name, value, unit, better, conditions, ci=None, **extra):
    """One measured figure. `better` is "lower" or "higher"."""
    return {"suite": suite, "name": name, "value": value, "unit": unit, "better": better,
            "ci": ci, **extra, **conditions}


def not_compared(f):
    """Why the check does not compare figure `f` (None: it does). A figure whose spread
    at one commit is wider than the 20% the check looks for cannot support it."""
    if f["name"] == "max" or f["name"].endswith(" max B"):
        return "a maximum: one sample"
    if f["suite"] == "heartbeat_gap" and f["name"].startswith("gap"):
        return "a longest gap: one sample"
    if f["suite"] == "heartbeat_gap" and f["name"] == "snapshot stream":
        return ("the heartbeat test's stream rate: 186-250 MiB/s in five measurements of one "
                "commit; quic snapshot/64MiB is the throughput that is compared")
    return None


def json_lines(text, bench):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and f'"bench":"{bench}"' in line:
            out.append(json.loads(line))
    if not out:
        sys.exit(f"no {bench} result in the output:\n{text[-4000:]}")
    return out


def criterion_ids(layer):
    text, _ = measured(["cargo", "bench", "-q", "--locked", "-p", "benches", "--", layer, "--list"])
    ids = [m.group(1) for m in re.finditer(r"^(\S.*): benchmark$", text, re.M)]
    if not ids:
        sys.exit(f"criterion listed no benches for {layer}:\n{text}")
    return ids


def run_criterion(layer, out, quick, only_ids=None):
    home = out / "criterion"
    figures = []
    for bench_id in only_ids or criterion_ids(layer):
        args = ["cargo", "bench", "-q", "--locked", "-p", "benches", "--",
                "^" + re.escape(bench_id) + "$", "--noplot"]
        if quick:
            args += ["--warm-up-time", "0.5", "--measurement-time", "1", "--sample-size", "10"]
        _, cond = measured(args, env={"CRITERION_HOME": str(home)},
                           log_file=out / f"{layer}.log")
        base = home / bench_id / "new"
        est = json.loads((base / "estimates.json").read_text())["median"]
        meta = json.loads((base / "benchmark.json").read_text())
        ci = est["confidence_interval"]
        figures.append(figure(
            layer, bench_id, est["point_estimate"], "ns", "lower", cond,
            ci=[ci["lower_bound"], ci["upper_bound"]], throughput=meta.get("throughput")))
    return figures


def run_rtt(out, quick):
    text, cond = measured(["cargo", "bench", "-q", "--locked", "-p", "quorum-raft-net-quic", "--bench", "rtt"],
                          env={"RTT_SAMPLES": "2000"} if quick else None, log_file=out / "rtt.log")
    r = json_lines(text, "rtt")[0]
    return [figure("rtt", q, r[f"{q}_ns"], "ns", "lower", cond, samples=r["samples"])
            for q in ["p50", "p90", "p99", "max"]]


def run_heartbeat_gap(out, _quick):
    text, cond = measured(
        ["cargo", "test", "-q", "--locked", "--release", "-p", "quorum-raft-net-quic", "--test", "transport",
         "heartbeats_keep_flowing_while_a_64_mib_snapshot_streams", "--", "--exact", "--nocapture"],
        log_file=out / "heartbeat_gap.log")
    r = json_lines(text, "heartbeat_gap")[0]
    return [
        figure("heartbeat_gap", "gap during snapshot", r["gap_ns"], "ns", "lower", cond),
        figure("heartbeat_gap", "gap without", r["quiet_gap_ns"], "ns", "lower", cond),
        figure("heartbeat_gap", "snapshot stream", r["snapshot_bytes"] * 1e9 / r["snapshot_ns"],
               "B/s", "higher", cond),
    ]


def run_snapshot_latency(out, quick):
    env = {"SNAPSHOT_BENCH_KEYS": "16384", "SNAPSHOT_BENCH_APPLIES": "200"} if quick else None
    text, cond = measured(["cargo", "bench", "-q", "--locked", "-p", "quorum-raft-storage-lmdb",
                           "--bench", "snapshot_latency"], env=env, log_file=out / "snapshot_latency.log")
    figures = []
    for r in json_lines(text, "snapshot_latency"):
        mode = r["durability"].lower()
        i = r["interleaved"]
        rows = [
            ("p50 A", r["a"]["p50_us"], "us"), ("p99 A", r["a"]["p99_us"], "us"),
            ("p99 B", r["b"]["p99_us"], "us"), ("max B", r["b"]["max_us"], "us"),
            ("B/A", r["p99_ratio"], "ratio"),
            ("p99 I-", i["without"]["p99_us"], "us"), ("p99 I+", i["during"]["p99_us"], "us"),
            ("I+/I-", i["p99_ratio"], "ratio"),
            ("snapshot secs", i["snapshot_secs_median"], "s"),
        ]
        figures += [figure("snapshot_latency", f"{mode} {name}", value, unit, "lower", cond)
                    for name, value, unit in rows]
    return figures


RUNNERS = {
    "rtt": run_rtt,
    "heartbeat_gap": run_heartbeat_gap,
    "snapshot_latency": run_snapshot_latency,
}


def run_suite(suite, out, quick, only_ids=None):
    log(f"{suite}")
    if suite in CRITERION_SUITES:
        return run_criterion(suite, out, quick, only_ids)
    return RUNNERS[suite](out, quick)


def dsync_ms(directory):
    """A 4 KiB write synced with O_DSYNC, 2,000 times: ms per write (dd oflag=dsync)."""
    path = Path(directory) / "dd-test"
    try:
        t0 = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o600)
        try:
            block = b"\0" * 4096
            for _ in range(2000):
                os.write(fd, block)
        finally:
            os.close(fd)
        return round((time.monotonic() - t0) / 2000 * 1e3, 3)
    finally:
        path.unlink(missing_ok=True)


def machine():
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, text=True, capture_output=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    tmp = tempfile.gettempdir()
    fs = subprocess.run(["df", "-T", tmp], text=True, capture_output=True).stdout.splitlines()[-1].split()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changes": git("status", "--porcelain", "--untracked-files=no") != "",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "memory_gib": round(mem / 2**20, 1),
        "kernel": os.uname().release,
        "tmp_fs": f"{fs[1]} on {fs[0]}",
        "dsync_4k_ms": dsync_ms(tmp),
        "load_at_start": loadavg(),
    }


def build(suites):
    log("building (bench profile)")
    pkgs = []
    if any(s in CRITERION_SUITES for s in suites):
        pkgs += ["-p", "benches"]
    if "rtt" in suites:
        pkgs += ["-p", "quorum-raft-net-quic"]
    if "snapshot_latency" in suites:
        pkgs += ["-p", "quorum-raft-storage-lmdb"]
    if pkgs:
        measured(["cargo", "bench", "-q", "--locked", "--no-run", *pkgs])
    if "heartbeat_gap" in suites:
        measured(["cargo", "test", "-q", "--locked", "--release", "--no-run", "-p", "quorum-raft-net-quic",
                  "--test", "transport"])


def untouched():
    """The repository's status and a listing of ../shared: a run must leave both as
    they were."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, text=True,
                            capture_output=True).stdout
    shared = ROOT.parent / "shared"
    listing = sorted(f"{p} {p.stat().st_size} {p.stat().st_mtime_ns}"
                     for p in shared.rglob("*") if not p.is_symlink()) if shared.is_dir() else []
    return status, listing


def settle(below=1.0, at_most=180):
    """Waits (at most `at_most` seconds) until the 1-minute load average is below
    `below`, so that the build before the first figure does not show in its load."""
    t0 = time.monotonic()
    if loadavg() >= below:
        log(f"waiting for the load average ({loadavg():.2f}) to fall below {below}")
    while loadavg() >= below and time.monotonic() - t0 < at_most:
        time.sleep(2)


def warm_up(seconds=10):
    """A busy loop on every core for `seconds`. After minutes of idle this VM ran the
    first benches of a run 24-57% slower than the same benches a minute later (other
    CPU 0.00 throughout: the host, not a process here), so the first figure must not
    meet idle CPUs."""
    log(f"warming up the CPUs ({seconds} s)")
    spin = f"import time\nt = time.monotonic() + {seconds}\nwhile time.monotonic() < t: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.wait()


def run_all(suites, out, quick):
    before = untouched()
    out.mkdir(parents=True, exist_ok=True)
    build(suites)
    settle()
    warm_up()
    info = machine()
    if info["load_at_start"] >= 1.0:
        log(f"the machine is not quiet: load average {info['load_at_start']} at the start")
    log(f"commit {info['commit']}{' (with uncommitted changes)' if info['changes'] else ''}, "
        f"writing to {out}")
    figures = []
    for suite in suites:
        figures += run_suite(suite, out, quick)
    results = {"machine": info, "quick": quick, "figures": figures}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "tables.md").write_text(render_all(results))
    if untouched() != before:
        sys.exit("the run changed the repository's status or ../shared (see git status)")
    return results


# ------------------------------------------------------------------ tables


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}" if ns / scale < 100 else f"{ns / scale:.0f} {unit}"
    return f"{ns:.3g} ns"


def fmt_rate(per_s, what):
    if per_s >= 1e6:
        return f"{per_s / 1e6:.3g}M {what}/s"
    return f"{per_s:,.0f} {what}/s"


def conditions(f):
    return f"{f['load'][0]:.2f}-{f['load'][1]:.2f} / {f['other_cpu']:.2f}"


COND = "load avg / other CPU"


def find(results, suite, name):
    for f in results["figures"]:
        if f["suite"] == suite and f["name"] == name:
            return f
    return None


def per_item(f):
    tp = f.get("throughput") or {}
    n = tp.get("Elements") or tp.get("Bytes") or 1
    return f["value"] / n, n


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def suite_figures(results, suite):
    return [f for f in results["figures"] if f["suite"] == suite]


def render_proto(results):
    rows = []
    for f in suite_figures(results, "proto"):
        per_byte, n = per_item(f)
        rows.append([f"`{f['name']}`", fmt_time(f["value"]), f"{n} B", f"{1e9 / per_byte / 2**20:,.0f} MiB/s",
                     conditions(f)])
    return table(["bench", "per iteration", "frame", "throughput", COND], rows)


def render_core(results):
    rows = []
    for f in suite_figures(results, "core"):
        per, n = per_item(f)
        rows.append([str(n), fmt_time(f["value"]), fmt_time(per), conditions(f)])
    return table(["batch (N)", "time per iteration", "per committed entry", COND], rows)


def render_node(results):
    rows = []
    for f in suite_figures(results, "node"):
        n = f["name"].rsplit("/", 1)[-1]
        rows.append([n, f"{1e9 / f['value']:,.0f}", fmt_time(f["value"]), conditions(f)])
    return table(["proposers (N)", "operations/s", "time per operation", COND], rows)


def render_quic(results):
    rows = []
    f = find(results, "quic", "frames/append_128B")
    if f:
        rows.append(["128-byte appends, one connection (encode, batch, encrypt, decrypt, decode)",
                     f"{fmt_rate(1e9 / f['value'], 'frames')} ({fmt_time(f['value'])} each)", conditions(f)])
    f = find(results, "quic", "round_trip/heartbeat")
    if f:
        rows.append(["round trip, one heartbeat in flight, echoed by a task (criterion median)",
                     fmt_time(f["value"]), conditions(f)])
    p = {q: find(results, "rtt", q) for q in ("p50", "p90", "p99", "max")}
    if all(p.values()):
        rows.append([f"the same, {p['p50']['samples']:,} samples (`rtt`)",
                     ", ".join(f"{q} {fmt_time(v['value'])}" for q, v in p.items()), conditions(p["p50"])])
    f = find(results, "quic", "snapshot/64MiB")
    if f:
        per, n = per_item(f)
        rows.append(["64 MiB snapshot in 1 MiB chunks on the snapshot stream",
                     f"{n * 1e9 / f['value'] / 2**20:,.0f} MiB/s", conditions(f)])
    gap, quiet = find(results, "heartbeat_gap", "gap during snapshot"), find(results, "heartbeat_gap", "gap without")
    stream = find(results, "heartbeat_gap", "snapshot stream")
    if gap and quiet and stream:
        rows.append(["longest gap between heartbeats sent every ms, while that snapshot streams / without "
                     f"(release test; the stream ran at {stream['value'] / 2**20:,.0f} MiB/s)",
                     f"{fmt_time(gap['value'])} / {fmt_time(quiet['value'])}", conditions(gap)])
    return table(["bench", "result", COND], rows)


def render_lmdb(results):
    names = {"append": "append, batch {}", "read": "read {} entries", "apply": "apply {} puts"}
    rows = []
    for f in suite_figures(results, "lmdb"):
        per, n = per_item(f)
        group = f["name"].split("/")[0]
        rows.append([names.get(group, f["name"] + " ({})").format(f"{n:,}"), fmt_time(f["value"]),
                     f"{fmt_rate(1e9 / per, 'entries' if group != 'apply' else 'puts')}", conditions(f)])
    return table(["bench", "per iteration", "throughput", COND], rows)


def render_snapshot_latency(results):
    rows = []
    for mode in ("deferred", "synced"):
        get = lambda n: find(results, "snapshot_latency", f"{mode} {n}")
        if not get("p99 A"):
            continue
        ms = lambda n: f"{get(n)['value'] / 1e3:.3f} ms"
        rows.append([mode, ms("p50 A"), ms("p99 A"), ms("p99 B"), f"{get('B/A')['value']:.2f}",
                     f"{get('max B')['value'] / 1e3:.1f} ms", ms("p99 I-"), ms("p99 I+"),
                     f"{get('I+/I-')['value']:.2f}", f"{get('snapshot secs')['value']:.1f} s",
                     conditions(get("p99 A"))])
    return table(["applies", "p50 A", "p99 A", "p99 B", "B/A", "max B", "p99 I-", "p99 I+", "I+/I-",
                  "snapshot", COND], rows)


RENDERERS = {
    "proto": render_proto,
    "core": render_core,
    "node": render_node,
    "quic": render_quic,
    "lmdb": render_lmdb,
    "snapshot_latency": render_snapshot_latency,
}


def caption(results):
    m = results["machine"]
    changes = " plus uncommitted changes" if m["changes"] else ""
    return (f"Measured {m['date']} at commit {m['commit']}{changes} by `scripts/bench-all.py run`; "
            f"{m['cpu']}, {m['memory_gib']} GiB, temporary files on {m['tmp_fs']} "
            f"(a 4 KiB O_DSYNC write: {m['dsync_4k_ms']} ms). "
            f"Load average at the start {m['load_at_start']:.2f}.")


def render_all(results):
    parts = [caption(results)]
    for name, render in RENDERERS.items():
        parts.append(f"### {name}\n\n{render(results)}")
    return "\n\n".join(parts) + "\n"


def rewrite_readme(results):
    """Replaces the text between `<!-- bench-all:NAME -->` and `<!-- /bench-all:NAME -->`
    in the README with that table (`caption` for the machine line)."""
    text = README.read_text()
    blocks = {"caption": caption, **RENDERERS}
    for name, render in blocks.items():
        pattern = re.compile(rf"(<!-- bench-all:{name} -->\n)(?:.*?\n)?(<!-- /bench-all:{name} -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"README.md has no <!-- bench-all:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + render(results) + "\n" + m.group(2), text)
    README.write_text(text)


# ------------------------------------------------------------------ the check


def disturbed(f):
    """Why a measurement cannot be trusted to within 20%, or None."""
    if f["other_cpu"] > BUSY_CORES:
        return f"other processes used {f['other_cpu']:.2f} cores while it ran"
    if f.get("ci") and f["value"] > 0 and (f["ci"][1] - f["ci"][0]) / f["value"] > WIDE_CI:
        return f"its confidence interval is {(f['ci'][1] - f['ci'][0]) / f['value']:.0%} of its median"
    return None


def labelled(which, why):
    return f"in {which} {why}" if why else None


def compare(fresh, old):
    """How much worse `fresh` is than `old`: 0.25 is 25% worse, negative is better."""
    f, o = fresh["value"], old["value"]
    if f <= 0 or o <= 0:
        return 0.0
    return f / o - 1 if old["better"] == "lower" else o / f - 1


def check(args):
    against = json.loads(Path(args.against).read_text())
    suites = args.only or SUITES
    if args.fresh:
        fresh = json.loads(Path(args.fresh).read_text())
        out = Path(args.fresh).parent
    else:
        out = Path(args.out) if args.out else default_out("check")
        fresh = run_all(suites, out, quick=False)
    old_by = {(f["suite"], f["name"]): f for f in against["figures"]}
    m0, m1 = against["machine"], fresh["machine"]
    print(f"recorded: commit {m0['commit']}, {m0['started']}, load at start {m0['load_at_start']}")
    print(f"fresh:    commit {m1['commit']}{' +changes' if m1['changes'] else ''}, {m1['started']}, "
          f"load at start {m1['load_at_start']}")
    # Each fresh figure of the chosen suites with its recorded one and how much worse it is.
    pairs = [(f, old_by[(f["suite"], f["name"])]) for f in fresh["figures"]
             if f["suite"] in suites and (f["suite"], f["name"]) in old_by]
    pairs = [(f, o, compare(f, o)) for f, o in pairs]
    flagged = [(f, o, w) for f, o, w in pairs if w > WORSE and not not_compared(f)]
    # Measure each flagged figure once more (a custom bench reruns whole).
    again = {}
    if flagged and not args.no_rerun:
        rerun_dir = out / "rerun"
        rerun_dir.mkdir(parents=True, exist_ok=True)
        for suite in dict.fromkeys(f["suite"] for f, _, _ in flagged):
            ids = [f["name"] for f, _, _ in flagged if f["suite"] == suite]
            for g in run_suite(suite, rerun_dir, False, ids if suite in CRITERION_SUITES else None):
                again[(g["suite"], g["name"])] = g
    verdicts = {"ok": 0, "regression": 0, "unclear": 0, "not compared": 0}
    rows = []
    for f, o, w in pairs:
        why = labelled("this run", disturbed(f)) or labelled("the recorded run", disturbed(o))
        verdict = "ok"
        if not_compared(f):
            verdict = f"not compared: {not_compared(f)}"
        elif w > WORSE:
            g = again.get((f["suite"], f["name"]))
            if g is None:
                verdict = "unclear: not measured again (--no-rerun)"
            else:
                w2 = compare(g, o)
                why = why or labelled("the second measurement", disturbed(g))
                if w2 <= WORSE:
                    verdict = f"noise: measured again, {w2:+.0%}"
                elif why:
                    verdict = f"unclear: again {w2:+.0%}, but {why}"
                else:
                    verdict = f"REGRESSION: again {w2:+.0%}"
        kind = verdict.split(":")[0].lower()
        verdicts["ok" if kind in ("ok", "noise") else kind] += 1
        rows.append([f"{f['suite']} {f['name']}", show(o), show(f), f"{w:+.0%}",
                     f"{o['load'][0]:.2f} / {f['load'][0]:.2f}", f"{o['other_cpu']:.2f} / {f['other_cpu']:.2f}",
                     verdict])
    print(table(["figure", "recorded", "fresh", "worse by", "load (rec / fresh)", "other CPU", "verdict"], rows))
    print(f"\n{verdicts['ok']} within {WORSE:.0%} (or noise), {verdicts['regression']} regressions, "
          f"{verdicts['unclear']} cannot tell noise from a regression, {verdicts['not compared']} not compared")
    if verdicts["regression"]:
        return 1
    return 3 if verdicts["unclear"] else 0


def show(f):
    if f["unit"] == "ns":
        return fmt_time(f["value"])
    if f["unit"] == "us":
        return fmt_time(f["value"] * 1e3)
    if f["unit"] == "B/s":
        return f"{f['value'] / 2**20:,.0f} MiB/s"
    return f"{f['value']:.3g} {f['unit']}"


# ------------------------------------------------------------------ main


def default_out(kind):
    return TARGET / "bench-all" / f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def suites_arg(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown suites {unknown}; the suites are {', '.join(SUITES)}")
    return names


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure and write results.json and tables.md")
    r.add_argument("--out", help="output directory")
    r.add_argument("--only", type=suites_arg, help="comma-separated suites")
    r.add_argument("--quick", action="store_true", help="short runs, to try the script (not figures)")
    t = sub.add_parser("tables", help="print the README's tables from a results.json")
    t.add_argument("results")
    rec = sub.add_parser("record", help="make a results.json the recorded one and rewrite the README")
    rec.add_argument("results")
    c = sub.add_parser("check", help="compare a fresh run with the recorded figures")
    c.add_argument("--fresh", help="a results.json to compare instead of measuring now")
    c.add_argument("--against", default=str(RECORDED), help="the recorded figures")
    c.add_argument("--out", help="output directory of the fresh run")
    c.add_argument("--only", type=suites_arg, help="comma-separated suites")
    c.add_argument("--no-rerun", action="store_true", help="do not measure worse figures again")
    args = p.parse_args()

    if args.cmd == "run":
        out = Path(args.out) if args.out else default_out("run")
        results = run_all(args.only or SUITES, out, args.quick)
        print(render_all(results))
        print(f"results: {out / 'results.json'}", file=sys.stderr)
    elif args.cmd == "tables":
        print(render_all(json.loads(Path(args.results).read_text())))
    elif args.cmd == "record":
        results = json.loads(Path(args.results).read_text())
        if results.get("quick"):
            sys.exit("a --quick run is not a set of figures to record")
        missing = [s for s in SUITES if not suite_figures(results, s)]
        if missing:
            sys.exit(f"the run has no figures for {', '.join(missing)}: record a whole run")
        if Path(args.results).resolve() != RECORDED.resolve():
            shutil.copyfile(args.results, RECORDED)
        rewrite_readme(results)
        print(f"recorded {args.results} as {RECORDED.relative_to(ROOT)} and rewrote the README's tables")
    elif args.cmd == "check":
        sys.exit(check(args))


if __name__ == "__main__":
    main()
