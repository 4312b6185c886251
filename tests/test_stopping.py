"""One writer per run directory, and stopping: Ctrl-C and SIGTERM end a run (or a sweep and
all its runs) in one line that names --resume, and leave no process writing on its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decision_mamba.runlock import RunLockedError, run_lock
from helpers import write_episodes_d4rl

REPO = Path(__file__).resolve().parents[1]
GYM = [sys.executable, "gym/experiment.py", "--config", "configs/gym/hopper-medium.yaml"]
# Small, but long enough (a few seconds per iteration) to be stopped in the middle.
SLOW = ["model.d_model=16", "model.n_layer=1", "model.n_head=1", "train.batch_size=8", "train.context_len=4",
        "train.steps_per_iteration=400", "train.num_iterations=3", "train.warmup_steps=2", "eval.episodes=1",
        "eval.max_ep_len=10", "eval.targets=[3600]", "run.progress=false", "train.num_threads=1"]


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    env.pop("DM_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory, hopper_episodes) -> Path:
    return write_episodes_d4rl(tmp_path_factory.mktemp("data") / "hopper-test.hdf5", hopper_episodes)


def wait_for(condition, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds the run directory's lock until it is killed."""
    code = (f"from decision_mamba.runlock import run_lock; import time\n"
            f"with run_lock({str(run_dir)!r}):\n    print('locked', flush=True); time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code], env=environment(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


# ----- the lock --------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    first = holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError, match=rf"being written by process {first.pid} \(kill {first.pid}"):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        first.kill()
        first.wait()
    with run_lock(tmp_path / "run"):  # its holder is dead: the lock file it left blocks nothing
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def test_two_resumes_at_once_the_second_exits_in_one_line(tmp_path, hopper_file):
    """The entry point refuses a run directory that another process writes, before writing anything."""
    args = [*GYM, f"dataset={hopper_file}", *SLOW, "train.num_iterations=1", "train.steps_per_iteration=2",
            f"run.out_dir={tmp_path}", "run.name=run", "--resume"]
    run_dir = tmp_path / "run"
    first = holder(run_dir)
    try:
        done = subprocess.run(args, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"being written by process {first.pid}" in lines[0] and "--resume" in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "the refused run wrote nothing"
    # the holder gone, the same command runs
    done = subprocess.run(args, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]


# ----- a run stopped by a signal ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_run_in_one_line_naming_resume(tmp_path, hopper_file, signum):
    args = [*GYM, f"dataset={hopper_file}", *SLOW, f"run.out_dir={tmp_path}", "run.name=run"]
    run_dir = tmp_path / "run"
    # SIGINT at its default in the run, as in a terminal: a shell's background job (`make test &`)
    # ignores it, and so would the run it starts
    process = subprocess.Popen(args, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # any checkpoint, not iter_001.pt: the keep policy deletes that one at iteration 2's end
        # when it is not the best, and a busy machine may let this loop look only after that
        wait_for(lambda: any((run_dir / "checkpoints").glob("iter_*.pt")) or process.poll() is not None,
                 what="the first checkpoint")
        process.send_signal(signum)  # in iteration 2 (or 3 on a busy machine), in training or evaluation
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith(f"interrupted ({signal.Signals(signum).name}): {run_dir}"), lines[0]
    newest = re.search(r"newest checkpoint is iteration (\d+) of 3", lines[0])
    assert newest and int(newest.group(1)) in (1, 2) and "--resume" in lines[0], lines[0]
    if signum == signal.SIGTERM:  # and --resume goes on from there, to the end
        done = subprocess.run([*args, "--resume"], cwd=REPO, env=environment(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [1, 2, 3]


# The sweep's arguments for one Table 1 run far longer than the test.
SWEEP_ONE_LONG_RUN = ["--models", "dc", "--datasets", "hopper-medium", "--seeds", "12", "--",
                      *[a for a in SLOW if not a.startswith(("run.progress", "eval.targets", "train.steps_per"))],
                      "train.steps_per_iteration=5000"]


def stop_once_the_run_trains(command: list[str], run_dir: Path, **popen) -> tuple[subprocess.Popen, int, str, str]:
    """Start `command`, SIGTERM it once the run in `run_dir` holds its lock; returns the
    process, the run's PID (from the lock) and what the command printed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    lock = run_dir / ".lock"
    try:
        wait_for(lambda: (lock.exists() and lock.read_text().strip().isdigit()) or process.poll() is not None,
                 what="the run to start")
        run_pid = int(lock.read_text())
        assert run_pid != process.pid and alive(run_pid)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process, run_pid, stdout, stderr


def test_a_stopped_sweep_takes_its_running_runs_down_with_it(tmp_path, hopper_file):
    """SIGTERM to the sweep: its training process ends too (no orphan writing on), and the
    sweep's last line says how to continue."""
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "decision_mamba.sweep", "table1", "--out-dir", str(out), *SWEEP_ONE_LONG_RUN,
               f"dataset={hopper_file}"]
    process, run_pid, stdout, stderr = stop_once_the_run_trains(command, out / "hopper-test-dc-release-s12",
                                                                cwd=REPO, env=environment())
    assert process.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert not alive(run_pid), "the run's process outlived the sweep"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines[-1].startswith("interrupted (SIGTERM): the sweep stopped 1 running")
    assert "[1/1] start hopper-test-dc-release-s12" in stdout
    # the run's own log ends with its one line naming --resume
    log = (out / "logs" / "hopper-test-dc-release-s12.log").read_text()
    assert "interrupted (SIGTERM)" in log and "--resume" in log


def test_a_stopped_table_script_takes_the_sweep_and_its_runs_down(tmp_path, hopper_file):
    """SIGTERM to scripts/table1_gym.sh (a scheduler's stop, `kill`): the sweep it runs and the
    sweep's training process end too, and the script ends with their status."""
    out = tmp_path / "runs"
    env = {**environment(), "PYTHON": sys.executable, "RUNS": str(out), "OUT": str(tmp_path / "table")}
    command = ["bash", str(REPO / "scripts" / "table1_gym.sh"), *SWEEP_ONE_LONG_RUN, f"dataset={hopper_file}"]
    process, run_pid, stdout, stderr = stop_once_the_run_trains(command, out / "hopper-test-dc-release-s12",
                                                                cwd=tmp_path, env=env)
    assert process.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert not alive(run_pid), "the run's process outlived the table script"
    assert "interrupted (SIGTERM): the sweep stopped 1 running" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "table.md").exists(), "nothing aggregated after a stop"
