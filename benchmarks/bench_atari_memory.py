"""Peak memory of the DQN-replay loader (FrameStackStore) beside DT's layout of 4 stacked
copies of every frame.

Writes synthetic buffers in the exact DQN-replay layout (100,000 rows each, episodes of
400-1200 steps with dopamine's padding), then, each in a fresh process so that the peak
RSS belongs to one measurement:
  * loads N transitions with load_dqn_replay (trajectories_per_buffer=10, as DT), for
    each N of --transitions;
  * builds DT's in-memory layout for --dt-transitions transitions: one (4, 84, 84) uint8
    array per transition in a Python list, as DT's create_dataset keeps them.
Peak RSS (VmHWM) minus the RSS after imports is divided per transition and
extrapolated to 500,000 transitions (the DT / DMamba Atari setting). Prints a Markdown
table.

    .venv/bin/python benchmarks/bench_atari_memory.py --transitions 50000 200000 --dt-transitions 50000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # dqn_replay_writer, outside the package

GAME = "Synthetic"
ROWS_PER_BUFFER = 100_000
TARGET = 500_000
FRAME_BYTES = 84 * 84


def current_rss_bytes() -> int:
    # /proc/self/statm: sizes in pages; the second field is the resident set.
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    # VmHWM, the peak resident set of this process image. (ru_maxrss would not do: Linux
    # carries it over exec from the forking parent, which wrote gigabytes of buffers.)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def synthetic_buffer(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    """`rows` rows in dopamine's layout: padded episodes of 400-1200 steps, structured frames."""
    from decision_mamba.data.atari_replay import PADDING_ROWS
    from dqn_replay_writer import add_episode_padding  # tools/

    lengths = []
    while sum(lengths) + PADDING_ROWS * len(lengths) < rows:
        lengths.append(int(rng.integers(400, 1201)))
    steps = sum(lengths)
    # A moving diagonal pattern: every frame differs, and gzip compresses it quickly.
    y, x = np.mgrid[0:84, 0:84]
    frames = np.empty((steps, 84, 84), dtype=np.uint8)
    for t in range(steps):
        frames[t] = (x + 2 * y + t) % 200 + 1
    actions = rng.integers(0, 4, size=steps).astype(np.int32)
    rewards = (rng.random(steps) < 0.02).astype(np.float32)
    terminals = np.zeros(steps, dtype=np.uint8)
    terminals[np.cumsum(lengths) - 1] = 1
    padded = add_episode_padding(frames, actions, rewards, terminals)
    return tuple(array[:rows] for array in padded)  # the last episode is cut, as in real buffers


def write_buffers(root: Path, num_buffers: int) -> None:
    from dqn_replay_writer import write_replay_buffer  # tools/

    rng = np.random.default_rng(0)
    for index in range(num_buffers):
        observations, actions, rewards, terminals = synthetic_buffer(rng, ROWS_PER_BUFFER)
        write_replay_buffer(root, GAME, index, observations, actions, rewards, terminals, compresslevel=1)
        print(f"  wrote buffer {index} ({ROWS_PER_BUFFER} rows)", file=sys.stderr)


def measure_load(root: str, num_buffers: int, transitions: int) -> dict:
    from decision_mamba.data.atari_replay import load_dqn_replay

    baseline = current_rss_bytes()
    start = time.perf_counter()
    traj = load_dqn_replay(root, GAME, num_buffers=num_buffers, max_buffer_index=num_buffers - 1,
                           num_steps=transitions, trajectories_per_buffer=10, seed=0, show_progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() - baseline
    # One training batch of the Atari setting (B=256, K=30), gathered from the store.
    index = np.random.default_rng(0).integers(0, traj.num_transitions, size=(256, 30))
    start = time.perf_counter()
    for _ in range(5):
        traj.observations[index]
    batch_ms = (time.perf_counter() - start) / 5 * 1000
    return {"transitions": traj.num_transitions, "peak": peak, "seconds": seconds,
            "resident": traj.observations.nbytes + traj.actions.nbytes + traj.rewards.nbytes, "batch_ms": batch_ms}


def measure_dt_layout(transitions: int) -> dict:
    from decision_mamba.data.atari_replay import FrameStackStore

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(transitions, 84, 84), dtype=np.uint8)
    store = FrameStackStore.from_episodes(frames, np.array([transitions]))
    baseline = current_rss_bytes()  # the frames themselves are not counted
    # DT's create_dataset: obss += [states] for every transition, each a (4, 84, 84) array.
    stacks = [store[i] for i in range(transitions)]
    peak = peak_rss_bytes() - baseline
    return {"transitions": len(stacks), "peak": peak}


def run_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def gigabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--dt-transitions", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the synthetic buffers (default: a temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # a measurement in its own process: print one JSON line
        kind, *rest = args.child
        result = measure_load(rest[0], int(rest[1]), int(rest[2])) if kind == "load" else measure_dt_layout(int(rest[0]))
        print(json.dumps(result))
        return

    # Enough buffers for the largest N: about 90% of each buffer's rows end up in whole 10-episode reads.
    num_buffers = int(np.ceil(max(args.transitions) / (0.75 * ROWS_PER_BUFFER)))
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        print(f"writing {num_buffers} synthetic buffers to {workdir} ...", file=sys.stderr)
        write_buffers(Path(workdir), num_buffers)
        rows, loads = [], []
        for transitions in args.transitions:
            result = run_child("--child", "load", workdir, str(num_buffers), str(transitions))
            loads.append(result)
            per_transition = result["peak"] / result["transitions"]
            rows.append(
                f"| load_dqn_replay + FrameStackStore | {result['transitions']:,} | {gigabytes(result['peak'])} "
                f"| {per_transition:,.0f} | {gigabytes(per_transition * TARGET)} "
                f"| load {result['seconds']:.1f} s, (256, 30) batch {result['batch_ms']:.0f} ms |"
            )
    if len(loads) >= 2:
        # Fixed costs (imports aside: read buffers, planning arrays) divide out of a line through the points.
        sizes = np.array([r["transitions"] for r in loads], dtype=float)
        peaks = np.array([r["peak"] for r in loads], dtype=float)
        slope, intercept = np.polyfit(sizes, peaks, 1)
        rows.append(
            f"| load_dqn_replay + FrameStackStore, linear fit | - | {gigabytes(intercept)} fixed "
            f"| {slope:,.0f} | {gigabytes(intercept + slope * TARGET)} | fit through the rows above |"
        )
    dt = run_child("--child", "dt", str(args.dt_transitions))
    dt_per_transition = dt["peak"] / dt["transitions"]
    rows.append(
        f"| DT: list of (4, 84, 84) stacks | {dt['transitions']:,} | {gigabytes(dt['peak'])} "
        f"| {dt_per_transition:,.0f} | {gigabytes(dt_per_transition * TARGET)} | measured |"
    )
    rows.append(
        f"| DT: 4 copies of every frame (computed) | {TARGET:,} | - | {4 * FRAME_BYTES:,} "
        f"| {gigabytes(4 * FRAME_BYTES * TARGET)} | plus one 1M-row buffer ({gigabytes(1_000_000 * FRAME_BYTES)}) while reading |"
    )
    rows.append(
        f"| frames stored once (computed) | {TARGET:,} | - | {FRAME_BYTES + 9:,} "
        f"| {gigabytes((FRAME_BYTES + 9) * TARGET)} | frame + newest index (int64) + history (uint8) |"
    )
    print("| layout | transitions | peak RSS increase | bytes / transition | at 500,000 | notes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
