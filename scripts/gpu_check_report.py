"""The two Python halves of scripts/gpu_check.sh: what the machine is, and the final report.

    python scripts/gpu_check_report.py requirements [--mamba]   # the check's requirements, from pyproject.toml
    python scripts/gpu_check_report.py info DEVICE OUT.json     # versions, GPU, driver, scan backend and why
    python scripts/gpu_check_report.py report WORK_DIR OUT_PREFIX  # WORK_DIR's pieces -> OUT_PREFIX.json / .md

`report` reads from WORK_DIR: info.json, junit.xml (pytest), bench.json and bench.md
(benchmarks/bench_gpu.py), phases.tsv (name, seconds, exit status of each phase).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the GPU tests and the benchmark import, beside torch (the rest of the project's
# dependencies are for data, sweeps and logging); their bounds are pyproject.toml's.
CHECK_PACKAGES = ("torch", "numpy", "numba", "h5py", "gymnasium", "omegaconf", "tqdm", "pytest")
VERSIONS = ("torch", "triton", "mamba-ssm", "numpy", "numba", "gymnasium", "mujoco", "einops", "transformers", "pytest")
BUDGET_S = 600  # the check must finish in under 10 minutes on one GPU


def requirements(with_mamba: bool) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the copy pip carries
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pool = project["dependencies"] + extras["dev"]
    name = lambda r: re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower()  # noqa: E731
    wanted = [r for r in pool if name(r) in CHECK_PACKAGES]
    missing = set(CHECK_PACKAGES) - {name(r) for r in wanted}
    if missing:
        raise SystemExit(f"gpu_check: {', '.join(sorted(missing))} not in pyproject.toml's dependencies")
    return wanted + (extras["gpu"] if with_mamba else [])  # mamba_ssm's imports


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return [{"error": f"nvidia-smi: {type(err).__name__}: {err}"}]
    keys = ("name", "driver", "memory", "compute_capability")
    return [dict(zip(keys, (f.strip() for f in line.split(",")))) for line in out.strip().splitlines()]


def info(device: str, out: Path) -> int:
    sys.path.insert(0, str(REPO))
    import torch

    from decision_mamba.selective_scan import cuda_kernel_status, resolve_scan_backend

    record = {"host": platform.node(), "python": sys.version.split()[0], "platform": platform.platform(),
              "versions": {p: _version(p) for p in VERSIONS}, "torch_cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
              "cuda_available": torch.cuda.is_available(), "device": device, "nvidia_smi": _nvidia_smi()}
    if torch.cuda.is_available():
        record["gpus"] = [{"name": torch.cuda.get_device_name(i), "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                           "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                          for i in range(torch.cuda.device_count())]
    ok = device == "cpu" or torch.cuda.is_available()
    if ok:
        record["scan_backend_auto"], record["scan_backend_reason"] = resolve_scan_backend("auto", device)
        record["cuda_kernel"] = dict(zip(("works", "why"), cuda_kernel_status(device)))
    else:
        record["error"] = (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; "
                           f"check the driver (nvidia-smi) and that this torch is a CUDA build")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    v = record["versions"]
    print(f"torch {v['torch']} (CUDA {record['torch_cuda']}), triton {v['triton']}, mamba-ssm {v['mamba-ssm']}; "
          f"GPU {', '.join(g['name'] for g in record.get('gpus', [])) or 'none'}, driver "
          f"{', '.join(s.get('driver', '?') for s in record['nvidia_smi'])}")
    print(f"scan backend (auto): {record.get('scan_backend_auto')} ({record.get('scan_backend_reason', record.get('error'))})")
    return 0 if ok else 1


def _junit(path: Path) -> dict:
    if not path.is_file():
        return {"error": "pytest wrote no junit.xml (it did not run, or crashed)"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases, counts = [], {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
        counts[outcome] += 1
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    return {"counts": counts, "cases": cases}


def report(work: Path, prefix: Path) -> int:
    info_record = json.loads((work / "info.json").read_text()) if (work / "info.json").is_file() else {}
    phases = [dict(zip(("phase", "seconds", "status"), line.split("\t")))
              for line in (work / "phases.tsv").read_text().splitlines() if line.strip()]
    for p in phases:
        p["seconds"], p["status"] = float(p["seconds"]), int(p["status"])
    tests = _junit(work / "junit.xml")
    bench = json.loads((work / "bench.json").read_text()) if (work / "bench.json").is_file() else None
    total = sum(p["seconds"] for p in phases)
    ok = all(p["status"] == 0 for p in phases) and not tests.get("error") and tests["counts"]["failed"] == 0 \
        and tests["counts"]["error"] == 0
    result = {"ok": ok, "seconds": round(total, 1), "within_budget": total < BUDGET_S, "info": info_record,
              "phases": phases, "tests": tests, "bench": bench}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    v = info_record.get("versions", {})
    gpus = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in info_record.get("gpus", []))
    driver = ", ".join(s.get("driver", s.get("error", "?")) for s in info_record.get("nvidia_smi", []))
    lines = [f"# GPU check on {info_record.get('host', platform.node())}: {'passed' if ok else 'FAILED'}", "",
             f"Device `{info_record.get('device')}`{': a dry run on the CPU, not a GPU result' if info_record.get('device') == 'cpu' else ''}. "
             f"{total:.0f} s in all ({'within' if total < BUDGET_S else 'OVER'} the {BUDGET_S // 60}-minute budget).", "",
             *([f"**{info_record['error']}**", ""] if info_record.get("error") else []),
             "| | |", "|---|---|",
             f"| GPU | {gpus or 'none'} |", f"| driver | {driver} |",
             f"| python | {info_record.get('python')} |",
             f"| torch | {v.get('torch')} (CUDA {info_record.get('torch_cuda')}, cuDNN {info_record.get('cudnn')}) |",
             f"| triton | {v.get('triton')} |", f"| mamba-ssm | {v.get('mamba-ssm') or 'not installed'} |",
             f"| scan backend (auto) | {info_record.get('scan_backend_auto')}: {info_record.get('scan_backend_reason')} |",
             f"| mamba-ssm kernel | {info_record.get('cuda_kernel', {}).get('why')} |",
             "", "| phase | seconds | exit status |", "|---|---|---|"]
    lines += [f"| {p['phase']} | {p['seconds']:.0f} | {p['status']} |" for p in phases]
    lines += ["", "## Tests marked gpu", ""]
    if tests.get("error"):
        lines.append(tests["error"])
    else:
        lines.append(", ".join(f"{n} {k}" for k, n in tests["counts"].items()))
        notable = [c for c in tests["cases"] if c["outcome"] != "passed"]
        if notable:
            lines += ["", "| test | outcome | message |", "|---|---|---|"]
            lines += [f"| {c['test']} | {c['outcome']} | {c['message'].replace('|', '/')} |" for c in notable]
    lines += ["", "## Benchmark", ""]
    bench_md = work / "bench.md"
    # its title becomes a line of text, its sections subsections of this one
    lines.append(re.sub(r"^# ", "", bench_md.read_text()).replace("\n## ", "\n### ") if bench_md.is_file()
                 else "benchmarks/bench_gpu.py wrote no results (see the log).")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "requirements":
        print("\n".join(requirements("--mamba" in args)))
        return 0
    if command == "info":
        return info(args[0], Path(args[1]))
    if command == "report":
        return report(Path(args[0]), Path(args[1]))
    raise SystemExit(f"gpu_check_report: unknown command {command!r} (requirements, info, report)")


if __name__ == "__main__":
    sys.exit(main())
