"""Which prebuilt mamba-ssm wheel this machine gets, and whether the release publishes it.

    python tools/mamba_ssm_wheel.py                  # for the torch that this python imports
    python tools/mamba_ssm_wheel.py --torch 2.10.0 --cuda 12.8 --python 3.11 --abi TRUE --arch x86_64
    python tools/mamba_ssm_wheel.py --name           # only the wheel's file name
    python tools/mamba_ssm_wheel.py --url            # only its download address
    python tools/mamba_ssm_wheel.py --torch-wheel torch-2.10.0-...whl --python 3.12 --download DIR
                                                     # the wheel for that torch wheel, into DIR

mamba-ssm ships as a source release whose setup.py (get_wheel_url, CachedWheelsCommand) first
downloads a prebuilt wheel from the project's GitHub release, named from torch's CUDA major
version, torch's major.minor, torch's C++11 ABI flag, the CPython tag and the machine; when
there is none it prints "Precompiled wheel not found. Building from source..." and compiles
with nvcc (15-35 minutes on many cores). This script says, before pip runs, which of the two
will happen (docs/gpu.md). It imports torch only to read its versions, inside describe().

Exit status: 0 when the release publishes the wheel, 1 when pip would compile, 2 on bad input.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile

RELEASE = "2.3.2.post1"
# Where setup.py looks; MAMBA_SSM_RELEASE_URL points --download at a mirror of the release.
RELEASE_URL = "https://github.com/state-spaces/mamba/releases/download/v{release}"
# The build matrix of mamba-ssm's .github/workflows/publish.yaml at tag v2.3.2.post1 (commit
# a14b1dff0454a3bc27d9eb31355dc01e4b2490ec), transcribed: every combination of these lists
# except the `exclude` entries below is built and uploaded to the release.
WORKFLOW_MATRIX = {
    "arch": ["x86_64", "aarch64"],  # os: ubuntu-22.04, ubuntu-22.04-arm
    "python": ["3.10", "3.11", "3.12", "3.13"],
    "torch": ["2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0"],
    "cuda": ["11.8.0", "12.9.1", "13.0.1"],
    "abi": ["FALSE", "TRUE"],
}
WORKFLOW_EXCLUDE = [
    {"torch": "2.8.0", "cuda": "11.8.0"},  # CUDA 11.8 is not supported by PyTorch 2.8+
    {"torch": "2.9.1", "cuda": "11.8.0"},
    {"torch": "2.10.0", "cuda": "11.8.0"},
    {"torch": "2.6.0", "cuda": "13.0.1"},  # CUDA 13.0 is only supported by PyTorch 2.9+
    {"torch": "2.7.1", "cuda": "13.0.1"},
    {"torch": "2.8.0", "cuda": "13.0.1"},
    {"torch": "2.6.0", "arch": "aarch64"},  # no aarch64 PyTorch wheels for 2.6.0, or 2.7.1+cu118
    {"torch": "2.7.1", "cuda": "11.8.0", "arch": "aarch64"},
    {"torch": "2.7.1", "abi": "FALSE"},  # PyTorch 2.7+ pip wheels use the C++11 ABI
    {"torch": "2.8.0", "abi": "FALSE"},
    {"torch": "2.9.1", "abi": "FALSE"},
    {"torch": "2.10.0", "abi": "FALSE"},
]
WHEEL_TORCH = "2.10.0"  # the newest torch with wheels: what `make install GPU=1` installs
# mamba-ssm 2.3.2.post1 declares triton>=3.5.0, which only torch 2.9 and later accept.
OLDEST_TORCH_FOR_ITS_REQUIREMENTS = (2, 9)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def wheel_name(torch: str, cuda: str, python: str, abi: str, arch: str, release: str = RELEASE) -> str:
    """The file name mamba-ssm's setup.py asks its release for (its get_wheel_url, for Linux).

    Only the CUDA major counts (setup.py maps 11.x, 12.x and 13.x to one wheel each), and
    only torch's major.minor (so 2.9.0 and 2.9.1 share the wheel built with 2.9.1).
    """
    python_tag = "cp" + "".join(python.split(".")[:2])
    return (f"mamba_ssm-{release}+cu{cuda.split('.')[0]}torch{_major_minor(torch)}cxx11abi{abi.upper()}"
            f"-{python_tag}-{python_tag}-linux_{arch}.whl")


def published_wheels() -> set[str]:
    """Every wheel name the workflow matrix above uploads to the release."""
    names = set()
    for values in itertools.product(*WORKFLOW_MATRIX.values()):
        job = dict(zip(WORKFLOW_MATRIX, values))
        if not any(all(job[k] == v for k, v in rule.items()) for rule in WORKFLOW_EXCLUDE):
            names.add(wheel_name(**job))
    return names


def verdict(torch: str, cuda: str | None, python: str, abi: str, arch: str, nvcc: str | None = None) -> tuple[bool, str]:
    """(published, what to tell the user before pip runs): one line on the wheel path, a few off it."""
    back = f"make install GPU=1 TORCH=torch=={WHEEL_TORCH}"
    if not cuda:
        return False, (f"mamba-ssm {RELEASE}: torch {torch} is not a CUDA build, so there is no wheel for it and "
                       f"nothing to compile against; use a CUDA torch: {back} (PyPI's Linux torch is one)")
    if cuda.split(".")[0] not in ("11", "12", "13"):
        return False, f"mamba-ssm {RELEASE}: its setup.py supports CUDA 11, 12 and 13, not torch's CUDA {cuda}; {back}"
    name = wheel_name(torch, cuda, python, abi, arch)
    if name in published_wheels():
        line = f"mamba-ssm {RELEASE}: prebuilt wheel {name} is published: pip downloads it, no nvcc needed"
        if tuple(int(x) for x in _major_minor(torch).split(".")) < OLDEST_TORCH_FOR_ITS_REQUIREMENTS:
            line += (f"\n  (its requirement triton>=3.5.0 conflicts with torch {_major_minor(torch)}'s triton: "
                     f"add MAMBA_PIP_ARGS=--no-deps)")
        return True, line
    torches = sorted({_major_minor(t) for t in WORKFLOW_MATRIX["torch"]}, key=lambda v: tuple(map(int, v.split("."))))
    why = []
    if _major_minor(torch) not in torches:
        why.append(f"torch {_major_minor(torch)} (wheels: {', '.join(torches)})")
    if python not in WORKFLOW_MATRIX["python"]:
        why.append(f"Python {python} (wheels: {', '.join(WORKFLOW_MATRIX['python'])})")
    if arch not in WORKFLOW_MATRIX["arch"]:
        why.append(f"{arch} (wheels: {', '.join(WORKFLOW_MATRIX['arch'])})")
    why = why or [f"this combination of CUDA {cuda.split('.')[0]}, C++11 ABI {abi} and {arch}"]
    # nvcc: its version, "" when there is none, None when not looked for (another machine's wheel).
    nvcc_line = {None: "", "": "; no nvcc found: install the CUDA toolkit (a -devel image)"}.get(nvcc, f"; nvcc here: CUDA {nvcc}")
    if nvcc and nvcc.split(".")[0] != cuda.split(".")[0]:
        nvcc_line += ", a different major: the build will fail"
    return False, "\n".join([
        f"mamba-ssm {RELEASE}: no prebuilt wheel {name}; none for {' and '.join(why)}.",
        "  pip will COMPILE it with nvcc for every GPU architecture it knows: 15-35 minutes on many",
        "  cores, longer on few (ninja runs MAX_JOBS compilers at once; MAX_JOBS=4 bounds the memory).",
        f"  nvcc's CUDA major must equal torch's (torch: CUDA {cuda}{nvcc_line}).",
        f"  Back on the wheel path (Python 3.10-3.13, x86_64 or aarch64): {back}",
    ])


def release_url(name: str) -> str:
    base = os.environ.get("MAMBA_SSM_RELEASE_URL") or RELEASE_URL.format(release=RELEASE)
    return f"{base.rstrip('/')}/{name}"


def describe_torch_wheel(path: str) -> dict:
    """torch, its CUDA and the arch from a torch wheel file, without installing it.

    The C++ ABI is not recorded in the wheel's metadata: PyPI's torch wheels use the C++11
    ABI from 2.7 on (as the comment in mamba-ssm's workflow says), the old one before.
    """
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read("torch/version.py").decode()
    fields = dict(re.findall(r"^(__version__|cuda)\b[^=]*=\s*'([^']*)'", source, re.MULTILINE))
    if "__version__" not in fields:
        raise ValueError(f"{path}: no __version__ in torch/version.py")
    version = fields["__version__"]
    major_minor = tuple(int(x) for x in _major_minor(version).split("."))
    arch = re.search(r"_(x86_64|aarch64)\.whl$", path)
    return {"torch": version, "cuda": fields.get("cuda"), "abi": "TRUE" if major_minor >= (2, 7) else "FALSE",
            "arch": arch.group(1) if arch else platform.machine()}


def download(name: str, folder: str) -> str:
    """Fetch the release's wheel `name` into `folder` (a partial file never stays behind)."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, name)
    with urllib.request.urlopen(release_url(name), timeout=120) as response, open(target + ".part", "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(target + ".part", target)
    return target


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    if not nvcc or not os.path.exists(nvcc):
        return ""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout.split()
        return out[out.index("release") + 1].rstrip(",")
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return ""


def describe() -> dict:
    """This machine as mamba-ssm's setup.py sees it (torch imported here, not at module level)."""
    import torch

    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "abi": str(torch._C._GLIBCXX_USE_CXX11_ABI).upper(), "arch": platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", help="torch version (default: the installed one's)")
    parser.add_argument("--cuda", help="torch's CUDA version, torch.version.cuda ('' for a CPU build)")
    parser.add_argument("--python", help="CPython major.minor (default: this python's)")
    parser.add_argument("--abi", choices=["TRUE", "FALSE"], help="torch._C._GLIBCXX_USE_CXX11_ABI")
    parser.add_argument("--arch", help="platform.machine(), e.g. x86_64, aarch64")
    parser.add_argument("--torch-wheel", metavar="FILE", help="read torch, CUDA, ABI and arch from this torch wheel")
    parser.add_argument("--download", metavar="DIR", help="fetch the wheel from the release into DIR")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--name", action="store_true", help="print only the wheel's file name")
    output.add_argument("--url", action="store_true", help="print only its address on the release")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("torch", "cuda", "python", "abi", "arch") if getattr(args, k) is not None}
    if args.torch_wheel:
        try:
            given = {**describe_torch_wheel(args.torch_wheel), "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
                     **given}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            print(f"mamba_ssm_wheel: cannot read --torch-wheel {args.torch_wheel} ({err}); give a torch wheel file",
                  file=sys.stderr)
            return 2
    if len(given) < 5:
        try:
            given = {**describe(), **given}
        except ImportError:
            print("mamba_ssm_wheel: no torch importable by this python; install torch first, or give "
                  "--torch --cuda --python --abi --arch", file=sys.stderr)
            return 2
    if (args.name or args.url) and not given["cuda"]:
        print(f"mamba_ssm_wheel: torch {given['torch']} is not a CUDA build: no mamba-ssm wheel", file=sys.stderr)
        return 2
    if args.name or args.url:
        name = wheel_name(given["torch"], given["cuda"], given["python"], given["abi"], given["arch"])
        print(release_url(name) if args.url else name)
        return 0 if name in published_wheels() else 1
    published, message = verdict(**given, nvcc=None if args.download else _nvcc_version())
    print(message)
    if not (published and args.download):
        return 0 if published else 1
    name = wheel_name(given["torch"], given["cuda"], given["python"], given["abi"], given["arch"])
    try:
        print(f"mamba_ssm_wheel: downloaded {download(name, args.download)}")
    except (OSError, urllib.error.URLError) as err:
        print(f"mamba_ssm_wheel: downloading {release_url(name)} failed ({err}); fetch it where GitHub is "
              f"reachable and give it as --mamba-wheel FILE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
