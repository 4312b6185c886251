"""Checkpoints and resume: verified loads, fallback, leftovers, torn and disk-full writes,
retention, and a resume that refuses another config, other data or another thread count."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decision_mamba.checkpoint import (CheckpointError, data_fingerprint, load_checkpoint, remove_leftovers,
                                       retain)
from decision_mamba.config import ConfigError, GymConfig, load_config
from decision_mamba.run import run_experiment
from test_run import tiny_dataset, tiny_setup

KEEP_ALL = ["run.keep_checkpoints=all"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics(run_dir):
    """metrics.jsonl without the wall-clock fields: what must be bitwise equal after a resume."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        record.pop("eval_time_s", None)
        record.pop("time", None)
        for timing in ("time_s", "steps_per_s", "tokens_per_s"):  # wall-clock, not numbers of the run
            record["train"].pop(timing, None)
        out.append(record)
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 3-iteration run: what every interrupted-and-resumed run must end with."""
    root = tmp_path_factory.mktemp("reference")
    cfg, trainer, evaluate = tiny_setup(root, KEEP_ALL)
    run_experiment(cfg, trainer, evaluate, run_dir=root / "run", group="g")
    return root / "run"


def interrupted_run(tmp_path, after_draws=13, overrides=KEEP_ALL):
    """The same run, stopped in the middle of iteration 3 (after checkpoints 1 and 2)."""
    cfg, trainer, evaluate = tiny_setup(tmp_path, overrides)
    draw, calls = trainer.sample_batch, {"n": 0}

    def dying_draw(rng):
        calls["n"] += 1
        if calls["n"] == after_draws:
            raise KeyboardInterrupt
        return draw(rng)

    trainer.sample_batch = dying_draw
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    return tmp_path / "run"


def resume(tmp_path, overrides=KEEP_ALL, **kwargs):
    torch.manual_seed(12345)  # a fresh process: the weights must come from the checkpoint
    cfg, trainer, evaluate = tiny_setup(tmp_path, overrides)
    return run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g", resume=True, **kwargs)


# ------------------------------------------------------------ resume refuses changes
@pytest.mark.parametrize("override, listed", [
    ("train.learning_rate=0.02", "train.learning_rate: 0.01 -> 0.02"),
    ("model.d_model=32", "model.d_model: 16 -> 32"),  # would be a torch size mismatch when loading
    ("seed=13", "seed: 12 -> 13"),
])
def test_resume_with_another_config_is_refused_before_anything_is_written(tmp_path, override, listed):
    run_dir = interrupted_run(tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as refused:
        resume(tmp_path, [*KEEP_ALL, override])
    message = str(refused.value)
    assert listed in message and "\n" not in message
    assert snapshot(run_dir) == before  # config.yaml, metrics and checkpoints untouched


def one_iteration_run(tmp_path):
    """A finished 1-iteration run with a data identity; its identity, other data's, its files."""
    identity = {"data_fingerprint": data_fingerprint(tiny_dataset(seed=0)), "env_id": "Hopper-v4"}
    cfg, trainer, evaluate = tiny_setup(tmp_path, ["train.num_iterations=1"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g", identity=identity)
    other_data = {**identity, "data_fingerprint": data_fingerprint(tiny_dataset(seed=1))}
    return identity, other_data, snapshot(tmp_path / "run")


def test_resume_with_other_data_or_another_thread_count_is_refused(tmp_path):
    identity, other_data, before = one_iteration_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"data_fingerprint: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        resume(tmp_path, ["train.num_iterations=1"], identity=other_data)

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(CheckpointError, match=rf"threads.torch: {threads} -> {threads + 1}"):
            resume(tmp_path, ["train.num_iterations=1"], identity=identity)
    finally:
        torch.set_num_threads(threads)
    assert snapshot(tmp_path / "run") == before
    # the same setup resumes (nothing left to do) and the thread counts are on record
    resume(tmp_path, ["train.num_iterations=1"], identity=identity)
    recorded = json.loads((tmp_path / "run" / "identity.json").read_text())["threads"]
    assert recorded["torch"] == threads
    import numba
    assert recorded["numba"] == numba.get_num_threads()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_001.pt")["identity"]["threads"] == recorded


def test_a_finished_run_is_extended_only_with_the_named_override(tmp_path, capsys):
    """The common case: more iterations for a finished run (kept whole, run.keep_checkpoints=all)."""
    cfg, trainer, evaluate = tiny_setup(tmp_path, [*KEEP_ALL, "train.num_iterations=2"])
    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    run_dir, before, first_two = tmp_path / "run", snapshot(tmp_path / "run"), metrics(tmp_path / "run")
    with pytest.raises(CheckpointError) as refused:
        resume(tmp_path, [*KEEP_ALL, "train.num_iterations=3", "eval.every=2"])
    message = str(refused.value)
    assert "eval.every: 1 -> 2; train.num_iterations: 2 -> 3" in message and "\n" not in message
    assert "run.resume_allow_changes=[eval.every,train.num_iterations]" in message  # the override, named
    assert snapshot(run_dir) == before

    capsys.readouterr()
    resume(tmp_path, [*KEEP_ALL, "train.num_iterations=3", "run.resume_allow_changes=[train.num_iterations]"])
    assert "run.resume_allow_changes allows: train.num_iterations: 2 -> 3" in capsys.readouterr().out
    records = metrics(run_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3] and records[2]["step"] == 15
    assert records[:2] == first_two  # the first two iterations as they were
    assert load_config(GymConfig, run_dir / "config.yaml", []).train.num_iterations == 3
    # the next plain --resume compares with the config as extended
    resume(tmp_path, [*KEEP_ALL, "train.num_iterations=3"])


def test_an_allowed_change_the_checkpoint_cannot_take_is_refused_before_anything_is_written(tmp_path):
    run_dir = interrupted_run(tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"iter_002.pt does not fit the model or optimizer of this config "
                                              r"\(RuntimeError: Error\(s\) in loading state_dict") as refused:
        resume(tmp_path, [*KEEP_ALL, "model.d_model=32", "run.resume_allow_changes=[model.d_model]"])
    assert "\n" not in str(refused.value)
    assert snapshot(run_dir) == before  # config.yaml still says d_model 16


def test_other_data_has_no_override_and_the_override_names_only_config_keys(tmp_path):
    identity, other_data, before = one_iteration_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"data_fingerprint: .*; other data has no override$") as refused:
        resume(tmp_path, ["train.num_iterations=1"], identity=other_data)
    assert "resume_allow_changes" not in str(refused.value)
    for allowed in ("data_fingerprint", "env_id"):
        with pytest.raises(CheckpointError, match=f"run.resume_allow_changes cannot allow '{allowed}'"):
            resume(tmp_path, ["train.num_iterations=1", f"run.resume_allow_changes=[{allowed}]"], identity=other_data)
    with pytest.raises(CheckpointError, match="names 'train.num_iteration', which is no config key"):
        resume(tmp_path, ["train.num_iterations=1", "run.resume_allow_changes=[train.num_iteration]"], identity=identity)
    assert snapshot(tmp_path / "run") == before
    # another thread count may be allowed: it changes the last bits only
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(CheckpointError, match=r"run.resume_allow_changes=\[threads\]"):
            resume(tmp_path, ["train.num_iterations=1"], identity=identity)
        resume(tmp_path, ["train.num_iterations=1", "run.resume_allow_changes=[threads]"], identity=identity)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize("override, message", [
    ("eval.episodes=0", "eval.episodes (per target) must be positive, got 0"),
    ("eval.episodes=-2", "eval.episodes (per target) must be positive, got -2"),
    ("eval.max_ep_len=0", "eval.max_ep_len must be positive, got 0"),
    # eval.targets=[] is the suite's default (tests/test_suites.py)
    ("eval.targets=[inf]", "all finite"),
    ("run.keep_checkpoints=some", "run.keep_checkpoints must be all, last_and_best or a positive number"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints must be all, last_and_best or a positive number"),
])
def test_nonsensical_eval_and_retention_values_are_refused_by_validation(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(GymConfig, None, [override])


# ---------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "one flipped byte"])
def test_a_damaged_checkpoint_is_named_in_one_line_without_unsafe_advice(reference_run, tmp_path, damage):
    good = (reference_run / "checkpoints" / "iter_001.pt").read_bytes()
    path = tmp_path / "iter_001.pt"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # in the middle of a weight tensor's bytes, which torch's loader reads without complaint
        weights = load_checkpoint(reference_run / "checkpoints" / "iter_001.pt")["trainer"]["model"]
        raw = max(weights.values(), key=torch.numel).numpy().tobytes()
        index = good.find(raw) + len(raw) // 2
        assert index > len(raw) // 2
        path.write_bytes(good[:index] + bytes([good[index] ^ 0x40]) + good[index + 1:])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "damaged" in message and "\n" not in message
    assert "weights_only" not in message


def test_resume_falls_back_from_a_damaged_newest_checkpoint(reference_run, tmp_path, capsys):
    run_dir = interrupted_run(tmp_path)
    newest = run_dir / "checkpoints" / "iter_002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    resume(tmp_path)
    out = capsys.readouterr().out
    assert "iter_002.pt is damaged" in out and "falling back" in out and "from iter_001.pt" in out
    assert (run_dir / "checkpoints" / "iter_002.pt.damaged").exists()
    assert metrics(run_dir) == metrics(reference_run)
    ref = load_checkpoint(reference_run / "checkpoints" / "iter_003.pt")["trainer"]["model"]
    got = load_checkpoint(run_dir / "checkpoints" / "iter_003.pt")["trainer"]["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


# ---------------------------------------------------------- leftovers and torn files
def test_resume_removes_our_temporary_leftovers_only(reference_run, tmp_path, capsys):
    run_dir = interrupted_run(tmp_path)
    ours = [run_dir / "checkpoints" / ".iter_003.pt.k2j4x9.tmp", run_dir / ".metrics.jsonl.a8b7.tmp"]
    theirs = [run_dir / "checkpoints" / "notes.tmp", run_dir / ".backup.tmp", run_dir / "checkpoints" / "iter_003.pt.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"x" * 100)
    resume(tmp_path)
    assert "removed 2 temporary file(s)" in capsys.readouterr().out
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert metrics(run_dir) == metrics(reference_run)
    assert remove_leftovers(tmp_path / "nothing-here") == []


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="nameless temporary files are Linux's O_TMPFILE")
def test_a_kill_while_saving_a_checkpoint_leaves_no_file_behind(tmp_path):
    """kill -9 in the middle of writing a checkpoint (1 MB written, not yet synced): no .tmp is
    left, with no --resume to clean up."""
    ckpt_dir = tmp_path / "checkpoints"
    script = f"""if True:
        import os, signal, torch
        from pathlib import Path
        from decision_mamba.checkpoint import save_checkpoint
        path = Path({str(ckpt_dir / "iter_001.pt")!r})
        save_checkpoint(path, {{"iteration": 1, "trainer": {{}}}})  # a finished one: it stays
        torch.save = lambda state, f: f.write(b"PK" + bytes(1_000_000))
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # once the bytes are in the file
        save_checkpoint(path.with_name("iter_002.pt"), {{"iteration": 2, "trainer": {{}}}})
    """
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in ckpt_dir.iterdir()] == ["iter_001.pt"]
    assert load_checkpoint(ckpt_dir / "iter_001.pt")["iteration"] == 1


def test_resume_drops_a_torn_last_metrics_line(reference_run, tmp_path, capsys):
    run_dir = interrupted_run(tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "step": 15, "train": {"loss_me')  # power loss in the middle of an append
    resume(tmp_path)
    assert "dropped the torn last line" in capsys.readouterr().out
    assert metrics(run_dir) == metrics(reference_run)


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    run_dir = interrupted_run(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(["{broken", *lines[1:]]) + "\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl line 1 is damaged"):
        resume(tmp_path)


def enospc_after(limit_bytes):
    return OSError(errno.ENOSPC, f"No space left on device (after {limit_bytes} bytes)")


def test_disk_full_while_saving_a_checkpoint_leaves_the_previous_state(reference_run, tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync_on_a_full_disk(fd):
        # the disk fills while the second checkpoint's bytes go out (a file system with delayed
        # allocation reports it at the sync); tests/test_user_errors.py fills a real small one
        if "/checkpoints/" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] >= 2:
                raise enospc_after(5004)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    cfg, trainer, evaluate = tiny_setup(tmp_path, KEEP_ALL)
    with pytest.raises(CheckpointError, match="no space left on the device while writing .*iter_002.pt"):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    monkeypatch.setattr(os, "fsync", real_fsync)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["iter_001.pt"]  # no .tmp, no half file
    assert load_checkpoint(checkpoints / "iter_001.pt")["iteration"] == 1
    resume(tmp_path)
    assert metrics(tmp_path / "run") == metrics(reference_run)


def test_disk_full_while_appending_metrics_then_resume(reference_run, tmp_path, monkeypatch):
    import builtins

    import decision_mamba.run as run_module

    class FullDisk:
        """A file whose writes stop half-way with ENOSPC, as on a full disk."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise enospc_after(len(text) // 2)

    appends = {"n": 0}

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            appends["n"] += 1
            if appends["n"] == 2:
                return FullDisk(f)
        return f

    monkeypatch.setattr(run_module, "open", open_on_a_full_disk, raising=False)
    cfg, trainer, evaluate = tiny_setup(tmp_path, KEEP_ALL)
    with pytest.raises(OSError):
        run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().endswith("\n")  # the torn line is there
    resume(tmp_path)
    assert metrics(tmp_path / "run") == metrics(reference_run)


# ------------------------------------------------------------------------ retention
def scripted_run(tmp_path, scores, policy):
    """A run whose evaluations score `scores` (one per iteration), under retention `policy`."""
    cfg, trainer, _ = tiny_setup(tmp_path, [f"train.num_iterations={len(scores)}", "train.steps_per_iteration=1",
                                            f"run.keep_checkpoints={policy}"])

    def evaluate(iteration):
        s = float(scores[iteration - 1])
        return {"1": {"return_mean": s, "return_std": 0.0, "length_mean": 1.0, "score_mean": s, "score_std": 0.0}}

    run_experiment(cfg, trainer, evaluate, run_dir=tmp_path / "run", group="g")
    return sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.parametrize("policy, kept", [
    ("last_and_best", ["iter_002.pt", "iter_005.pt"]),  # the best (9, first of the two) and the newest
    ("2", ["iter_002.pt", "iter_004.pt", "iter_005.pt"]),
    ("all", [f"iter_00{i}.pt" for i in range(1, 6)]),
])
def test_retention_keeps_the_newest_and_the_best(tmp_path, policy, kept):
    assert scripted_run(tmp_path, [5, 9, 1, 9, 2], policy) == kept
    # once the run has ended only "all" keeps the optimizer state; the weights are always there
    for name in kept:
        trainer = load_checkpoint(tmp_path / "run" / "checkpoints" / name)["trainer"]
        assert ("optimizer" in trainer) == (policy == "all") and "model" in trainer


def test_retention_is_the_default_and_counts_iterations_past_999(tmp_path):
    assert GymConfig().run.keep_checkpoints == "last_and_best"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    for i in (998, 999, 1000, 1001):
        (ckpt_dir / f"iter_{i:03d}.pt").write_bytes(b"")
    retain(ckpt_dir, "last_and_best", best_iteration=999)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["iter_1001.pt", "iter_999.pt"]
