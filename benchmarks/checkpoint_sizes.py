"""What Table 1's checkpoints need on disk: real checkpoints at the paper's sizes.

    python benchmarks/checkpoint_sizes.py

Writes one checkpoint (after one optimiser step, so Adam's moments exist) per model and
gym config (configs/gym/<env>-<dataset>.yaml), whole and compacted as at the end of a
run (decision_mamba.checkpoint.compact_finished), and adds them up over Table 1's 5 seeds.
"""
import tempfile
from pathlib import Path
import numpy as np, torch
from decision_mamba.config import GymConfig, load_config
from decision_mamba.model import DecisionModel
from decision_mamba.trainer import Trainer
from decision_mamba.checkpoint import save_checkpoint, compact_finished
from decision_mamba.config import to_yaml
dims = {"hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6)}
d = Path(tempfile.mkdtemp())
total = 0
for cfgfile in sorted(Path("configs/gym").glob("*-*.yaml")):
    env = cfgfile.stem.split("-")[0]; o, a = dims[env]
    for mixer in ("mamba", "attention", "conv", "s4"):
        cfg = load_config(GymConfig, cfgfile, [f"model.mixer={mixer}"])
        model = DecisionModel(cfg.model, (o,), a, discrete=False)
        tr = Trainer(model, cfg.train, lambda rng: None, np.random.default_rng(0), torch.device("cpu"))
        # one real optimiser step so Adam's moments exist (they are 2/3 of a checkpoint)
        for p in model.parameters(): p.grad = torch.zeros_like(p)
        tr.optimizer.step()
        ident = {"experiment": "gym", "state_mean": [0.0]*o, "state_std": [1.0]*o}
        (d / cfgfile.stem / mixer).mkdir(parents=True)
        p = d / cfgfile.stem / mixer / "iter_010.pt"
        save_checkpoint(p, {"iteration": 10, "trainer": tr.state_dict(), "config": to_yaml(cfg), "identity": ident})
        full = p.stat().st_size
        compact_finished(p.parent, "last_and_best")
        size = p.stat().st_size
        print(f"{cfgfile.stem:26s} {mixer:10s} whole {full/2**20:6.2f} MiB, weights only {size/2**20:6.2f} MiB")
        total += size * 5  # 5 seeds
print(f"finished runs, weights only: one checkpoint per run, 180 runs: {total/2**30:.2f} GiB; newest + best (at most 2): {2*total/2**30:.2f} GiB; "
      f"every iteration (10): {10*total/2**30:.2f} GiB")
