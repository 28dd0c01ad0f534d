#!/usr/bin/env python3
"""`cargo test`, with the test binaries run side by side (`just test`).

cargo runs the workspace's ~80 test binaries one after another. Most use both cores while
they run, but many are short, single-threaded or waiting on child processes: on 2 cores the
suite kept 1.5 of them busy on average (44.6 CPU-seconds in 28.9 s). This builds every test
target as `cargo test` would (`cargo test --no-run`), then runs the binaries `--parallel` at a
time, each as cargo runs it: from its package's folder, with `.cargo/config.toml`'s `[env]` and
`CARGO_MANIFEST_DIR` (the one of cargo's variables a test could read at run time), the same
arguments after `--`. The doc tests run as one more job. The longest binaries start first,
by the times of the last run (kept in target/release/test-times.json).

Each binary's output is printed whole when it ends, under cargo's `Running` line. At the
end: the counts, every `SKIPPED:` line the tests printed (test-support's skips, which
libtest would otherwise show scattered), and the binaries that failed; the exit status is
101 (cargo's) when any failed.

cargo-nextest was tried (0.9.151, 2 vCPU Zen 4): 24.7-25.6 s against 22-25 s here. It runs
each test in a process of its own (15 s of system time for the suite), hides the skips of
tests that pass, and costs CI a 4-minute build.

    scripts/run_tests.py [--parallel N] [CARGO-TEST-OPTIONS...] [-- TEST-BINARY-ARGS...]
"""

import argparse
import json
import os
import subprocess
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit("scripts/run_tests.py needs Python 3.11 or later (tomllib); or run `just test-serial`")
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path


def workspace_root() -> Path:
    """The folder of the Cargo workspace around the current directory."""
    cmd = ["cargo", "locate-project", "--workspace", "--message-format", "plain"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"run_tests.py: no Cargo workspace around {Path.cwd()}: {out.stderr.strip()}")
    return Path(out.stdout.strip()).parent


ROOT = workspace_root()
# cargo test's options that pick targets, which `--doc` cannot be mixed with.
TARGET_OPTIONS = {
    "--lib", "--bin", "--bins", "--test", "--tests", "--bench", "--benches",
    "--example", "--examples", "--all-targets", "--no-run", "--doc",
}


def config_env() -> dict:
    """`.cargo/config.toml`'s `[env]` (plain strings; the `{ value = ... }` form too)."""
    path = ROOT / ".cargo" / "config.toml"
    if not path.exists():
        return {}
    table = tomllib.loads(path.read_text()).get("env", {})
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if value.get("relative"):
                out[key] = str(ROOT / value["value"])
            else:
                out[key] = value["value"]
            if not value.get("force") and key in os.environ:
                del out[key]
        elif key not in os.environ:
            out[key] = value
    return out


def time_key(job) -> str:
    """A binary's name across builds: its package folder and target, without cargo's hash."""
    name, cwd, _, _ = job
    return f"{os.path.relpath(cwd, ROOT)} {name.split(' (')[0]}"


def load_times(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_times(path: Path, times: dict) -> None:
    """Written to a temporary name and renamed: a crash leaves the last complete file."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as e:
        print(f"note: could not save the test times to {path}: {e}", file=sys.stderr)


def build(cargo_args: list) -> list:
    """Builds the test targets; returns (name, package folder, executable) per test binary."""
    cmd = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics"] + cargo_args
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    binaries = []
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        package_dir = Path(msg["manifest_path"]).parent
        target = msg["target"]
        src = Path(target["src_path"]).relative_to(package_dir)
        # As cargo names them: a library's or binary's own tests are "unittests".
        name = str(src) if target["kind"] in (["test"], ["bench"], ["example"]) else f"unittests {src}"
        binaries.append((name, package_dir, msg["executable"]))
    if proc.wait() != 0:
        sys.exit(proc.returncode)
    return binaries


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--parallel N] [CARGO-TEST-OPTIONS...] [-- TEST-BINARY-ARGS...]",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=len(os.sched_getaffinity(0)),
        metavar="N",
        help="test binaries run at a time (default: the cores)",
    )
    argv = sys.argv[1:]
    test_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, test_args = argv[:i], argv[i + 1 :]
    opts, cargo_args = parser.parse_known_args(argv)
    if opts.parallel < 1:
        parser.error(f"--parallel must be at least 1 (got {opts.parallel})")

    started = time.monotonic()
    try:
        binaries = build(cargo_args)
    except KeyboardInterrupt:
        return 130
    env = dict(os.environ, **config_env())

    def run(job):
        name, cwd, cmd, extra_env = job
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=dict(env, **extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return name, time_key(job), proc.returncode, proc.stdout.decode(errors="replace"), time.monotonic() - t0

    jobs = [
        (
            f"Running {name} ({os.path.relpath(exe, ROOT)})",
            package_dir,
            [exe] + test_args,
            {"CARGO_MANIFEST_DIR": str(package_dir)},
        )
        for name, package_dir, exe in binaries
    ]
    # The doc tests, unless the options chose other targets (cargo refuses to mix them): cargo
    # builds and runs them itself (the only cargo process by now).
    if not any(a.split("=")[0] in TARGET_OPTIONS for a in cargo_args):
        doc = ["cargo", "test", "--doc"] + cargo_args + ["--"] + test_args
        jobs.append(("Doc-tests", ROOT, doc, {}))
    # Longest first, by the last run's times (the longest left to the end would run alone);
    # jobs without a time keep cargo's order, ahead of the others. The times are kept beside
    # the profile's binaries (target/release/), wherever CARGO_TARGET_DIR puts them.
    times_file = Path(binaries[0][2]).parent.parent / "test-times.json" if binaries else None
    last = load_times(times_file) if times_file else {}
    jobs.sort(key=lambda job: -last.get(time_key(job), float("inf")))

    failed, skips, counts, times = [], [], [0, 0, 0], {}
    pool = ThreadPoolExecutor(max_workers=opts.parallel)
    futures = [pool.submit(run, job) for job in jobs]
    try:
        for future in as_completed(futures):
            name, key, code, output, secs = future.result()
            times[key] = round(secs, 3)
            print(f"     {name} [{secs:.2f} s]", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()
            for line in output.splitlines():
                # A skip line can land mid-line, after libtest's "test NAME ... ".
                at = line.find("SKIPPED:")
                if at >= 0 and line[at:] not in skips:
                    skips.append(line[at:])
                if line.startswith("test result:"):
                    words = line.replace(";", "").split()
                    for k, what in enumerate(("passed", "failed", "ignored")):
                        if what in words:
                            counts[k] += int(words[words.index(what) - 1])
            if code != 0:
                failed.append(f"{name}: exit status {code}")
    except KeyboardInterrupt:
        # Ctrl-C reached the running binaries too (one process group); start no more.
        pool.shutdown(wait=False, cancel_futures=True)
        print("\ninterrupted: the binaries not yet started did not run", file=sys.stderr)
        return 130
    pool.shutdown()

    if times_file:
        save_times(times_file, dict(last, **times))
    print(
        f"\n{len(jobs)} test jobs, {opts.parallel} at a time: {counts[0]} passed, {counts[1]} failed, "
        f"{counts[2]} ignored in {time.monotonic() - started:.1f} s"
    )
    if skips:
        print(f"\n{len(skips)} skipped (as the tests printed it):")
        for line in skips:
            print(f"  {line}")
    if failed:
        print("\nFAILED:")
        for line in failed:
            print(f"  {line}")
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
