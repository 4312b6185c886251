"""tools/mamba_ssm_wheel.py and the GPU install around it, on the CPU.

The wheel names are checked three ways: against names written out by hand from mamba-ssm's
publish workflow (v2.3.2.post1), against the name mamba-ssm's own setup.py computes (its
get_wheel_url, run on stand-in torch versions), and through `make -n install GPU=1`. The
download is checked against a real HTTP server on 127.0.0.1 (GitHub is not reachable here).
"""

from __future__ import annotations

import ast
import functools
import http.server
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import threading
import tomllib
import types
import zipfile
from pathlib import Path

import pytest

from test_mamba_ssm_package import MAMBA_SSM_VERSION, _cache_dir, _pip

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mamba_ssm_wheel", REPO / "tools" / "mamba_ssm_wheel.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

# (torch, torch's CUDA, Python, C++11 ABI, arch) -> the wheel setup.py asks for, and whether
# the v2.3.2.post1 release has it: read off publish.yaml's matrix and its excludes by hand.
CASES = [
    (("2.10.0", "12.8", "3.11", "TRUE", "x86_64"), "cu12torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64", True),
    (("2.10.0+cu130", "13.0", "3.13", "TRUE", "aarch64"), "cu13torch2.10cxx11abiTRUE-cp313-cp313-linux_aarch64", True),
    (("2.10.0", "12.8", "3.11", "FALSE", "x86_64"), "cu12torch2.10cxx11abiFALSE-cp311-cp311-linux_x86_64", False),
    (("2.10.0", "11.8", "3.11", "TRUE", "x86_64"), "cu11torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64", False),
    (("2.9.0", "12.8", "3.12", "TRUE", "x86_64"), "cu12torch2.9cxx11abiTRUE-cp312-cp312-linux_x86_64", True),
    (("2.9.1", "13.0", "3.10", "TRUE", "aarch64"), "cu13torch2.9cxx11abiTRUE-cp310-cp310-linux_aarch64", True),
    (("2.8.0", "12.8", "3.12", "TRUE", "aarch64"), "cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_aarch64", True),
    (("2.8.0", "13.0", "3.12", "TRUE", "x86_64"), "cu13torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64", False),
    (("2.8.0", "11.8", "3.10", "TRUE", "x86_64"), "cu11torch2.8cxx11abiTRUE-cp310-cp310-linux_x86_64", False),
    (("2.7.1", "11.8", "3.12", "TRUE", "x86_64"), "cu11torch2.7cxx11abiTRUE-cp312-cp312-linux_x86_64", True),
    (("2.7.1", "11.8", "3.12", "TRUE", "aarch64"), "cu11torch2.7cxx11abiTRUE-cp312-cp312-linux_aarch64", False),
    (("2.7.0", "12.6", "3.12", "TRUE", "aarch64"), "cu12torch2.7cxx11abiTRUE-cp312-cp312-linux_aarch64", True),
    (("2.7.1", "12.6", "3.12", "FALSE", "x86_64"), "cu12torch2.7cxx11abiFALSE-cp312-cp312-linux_x86_64", False),
    (("2.6.0", "12.4", "3.10", "FALSE", "x86_64"), "cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64", True),
    (("2.6.0", "11.8", "3.11", "TRUE", "x86_64"), "cu11torch2.6cxx11abiTRUE-cp311-cp311-linux_x86_64", True),
    (("2.6.0", "12.4", "3.12", "FALSE", "aarch64"), "cu12torch2.6cxx11abiFALSE-cp312-cp312-linux_aarch64", False),
    (("2.6.0", "13.0", "3.12", "TRUE", "x86_64"), "cu13torch2.6cxx11abiTRUE-cp312-cp312-linux_x86_64", False),
    (("2.13.0", "12.8", "3.11", "TRUE", "x86_64"), "cu12torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64", False),
    (("2.10.0", "12.8", "3.14", "TRUE", "x86_64"), "cu12torch2.10cxx11abiTRUE-cp314-cp314-linux_x86_64", False),
    (("2.10.0", "12.8", "3.9", "TRUE", "x86_64"), "cu12torch2.10cxx11abiTRUE-cp39-cp39-linux_x86_64", False),
    (("2.10.0", "12.8", "3.11", "TRUE", "ppc64le"), "cu12torch2.10cxx11abiTRUE-cp311-cp311-linux_ppc64le", False),
]


@pytest.mark.parametrize("combination,name,published", CASES)
def test_wheel_name_and_whether_the_release_publishes_it(combination, name, published):
    expected = f"mamba_ssm-2.3.2.post1+{name}.whl"
    assert tool.wheel_name(*combination) == expected
    assert (expected in tool.published_wheels()) is published
    ok, message = tool.verdict(*combination)
    assert ok is published and expected in message


def test_the_release_has_68_wheels():
    # Per Python: x86_64 has torch 2.6 x {cu11, cu12} x {both ABIs} = 4, 2.7 x {cu11, cu12} = 2,
    # 2.8 x cu12 = 1, 2.9 and 2.10 x {cu12, cu13} = 4: 11; aarch64 has 2.7 x cu12, 2.8 x cu12,
    # 2.9 and 2.10 x {cu12, cu13}: 6. Four Pythons: 68.
    assert len(tool.published_wheels()) == 4 * (11 + 6)


def test_off_the_wheel_path_it_says_it_will_compile_how_long_and_the_way_back():
    ok, message = tool.verdict("2.13.0", "12.8", "3.11", "TRUE", "x86_64", nvcc="13.0")
    assert not ok
    assert "COMPILE" in message and "15-35 minutes" in message and "none for torch 2.13" in message
    assert "nvcc's CUDA major must equal torch's (torch: CUDA 12.8; nvcc here: CUDA 13.0, a different major" in message
    assert message.splitlines()[-1].endswith("make install GPU=1 TORCH=torch==2.10.0")
    _, message = tool.verdict("2.10.0", "12.8", "3.14", "TRUE", "x86_64", nvcc="12.9")
    assert "none for Python 3.14" in message and "nvcc here: CUDA 12.9)" in message
    _, message = tool.verdict("2.10.0", "12.8", "3.11", "TRUE", "x86_64", nvcc="")
    assert "no nvcc found" not in message  # on the path: no compiler needed, none mentioned
    ok, message = tool.verdict("2.13.0+cpu", None, "3.11", "TRUE", "x86_64")
    assert not ok and "not a CUDA build" in message and "\n" not in message
    ok, message = tool.verdict("2.7.1", "12.6", "3.11", "TRUE", "x86_64")
    assert ok and "MAMBA_PIP_ARGS=--no-deps" in message  # 2.3.2.post1's triton>=3.5.0
    ok, message = tool.verdict("2.10.0", "12.8", "3.11", "TRUE", "x86_64")
    assert ok and "\n" not in message and "no nvcc needed" in message


# --------------------------------------------------------------------------- mamba-ssm's own setup.py


@pytest.fixture(scope="module")
def setup_py_get_wheel_url():
    """mamba-ssm's get_wheel_url from its source release, with torch, sys and platform as arguments."""
    downloads = _cache_dir() / "downloads"
    sdist = downloads / f"mamba_ssm-{MAMBA_SSM_VERSION}.tar.gz"
    if not sdist.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        got = _pip(["download", f"mamba-ssm=={MAMBA_SSM_VERSION}", "--no-deps", "--no-binary", ":all:",
                    "--no-build-isolation", "-d", str(downloads)], downloads)
        if got.returncode != 0:
            pytest.skip(f"mamba-ssm's source release could not be downloaded: {(got.stdout + got.stderr)[-300:]}")
    with tarfile.open(sdist) as archive:
        source = archive.extractfile(f"mamba_ssm-{MAMBA_SSM_VERSION}/setup.py").read().decode()
    wanted = {"get_platform", "get_package_version", "get_wheel_url", "PACKAGE_NAME", "BASE_WHEEL_URL"}
    kept = [node for node in ast.parse(source).body
            if (isinstance(node, ast.FunctionDef) and node.name in wanted)
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in wanted for t in node.targets))]
    assert {getattr(n, "name", None) or n.targets[0].id for n in kept} == wanted
    code = compile(ast.Module(body=kept, type_ignores=[]), "mamba-ssm/setup.py", "exec")

    def get_wheel_url(torch_version, cuda, python, abi, arch):
        from packaging.version import parse

        major, minor = (int(x) for x in python.split("."))
        namespace = {
            "torch": types.SimpleNamespace(__version__=torch_version, version=types.SimpleNamespace(cuda=cuda),
                                           _C=types.SimpleNamespace(_GLIBCXX_USE_CXX11_ABI=abi == "TRUE")),
            "sys": types.SimpleNamespace(version_info=types.SimpleNamespace(major=major, minor=minor), platform="linux"),
            "platform": types.SimpleNamespace(machine=lambda: arch),
            "os": os, "re": re, "ast": ast, "Path": Path, "parse": parse,
            "HIP_BUILD": False, "this_dir": "unused"}
        exec(code, namespace)
        namespace["get_package_version"] = lambda: MAMBA_SSM_VERSION  # it reads mamba_ssm/__init__.py
        return namespace["get_wheel_url"]()

    return get_wheel_url


@pytest.mark.parametrize("combination", [c for c, _, _ in CASES])
def test_the_name_is_the_one_mamba_ssm_setup_py_computes(setup_py_get_wheel_url, combination, monkeypatch):
    monkeypatch.delenv("NVIDIA_PRODUCT_NAME", raising=False)
    url, filename = setup_py_get_wheel_url(*combination)
    assert filename == tool.wheel_name(*combination)
    assert url == tool.RELEASE_URL.format(release=tool.RELEASE) + "/" + filename


# --------------------------------------------------------------------------- the Makefile and friends


def make_dry_run(*args):
    return subprocess.run(["make", "-n", "-B", "install", "VENV=/nonexistent/venv", *args], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def torch_installed(dry_run):
    return re.search(r"pip install --quiet (torch==\S+)\n", dry_run).group(1)


def test_make_install_gpu_installs_a_wheel_covered_torch_then_mamba_ssm_from_its_wheel():
    dry_run = make_dry_run("GPU=1")
    torch = torch_installed(dry_run).removeprefix("torch==")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert torch.rsplit(".", 1)[0] in {"2.6", "2.7", "2.8", "2.9", "2.10"}  # publish.yaml's torch versions
    assert tool.verdict(torch, "12.8", python, "TRUE", "x86_64")[0]  # PyPI's Linux torch: CUDA 12, C++11 ABI
    lines = dry_run.splitlines()
    tool_line = next(i for i, line in enumerate(lines) if "tools/mamba_ssm_wheel.py" in line)
    install = next(i for i, line in enumerate(lines) if "mamba-ssm==" in line)
    assert tool_line < install  # the verdict comes before pip
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE" in lines[install] and "--no-build-isolation" in lines[install]
    assert f'"mamba-ssm=={tool.RELEASE}"' in lines[install] and "-c /nonexistent/venv/torch-pin.txt" in lines[install]
    # the package with make's extras and the gpu one, torch held by the same pin
    assert re.search(r'-c /nonexistent/venv/torch-pin\.txt -e "\.\[[a-z,]*,gpu\]"', dry_run)


def test_make_install_keeps_its_cpu_torch_and_torch_overrides_both():
    assert torch_installed(make_dry_run()) == "torch==2.13.0"
    assert "mamba" not in make_dry_run()
    assert torch_installed(make_dry_run("GPU=1", "TORCH=torch==2.9.1")) == "torch==2.9.1"
    assert torch_installed(make_dry_run("TORCH=torch==2.6.0")) == "torch==2.6.0"


def test_one_torch_and_one_mamba_ssm_everywhere():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^GPU_TORCH \?= torch==(\S+)$", makefile, re.M).group(1) == tool.WHEEL_TORCH
    assert re.search(r"^MAMBA_SSM \?= mamba-ssm==(\S+)$", makefile, re.M).group(1) == tool.RELEASE
    assert max(tool.WORKFLOW_MATRIX["torch"], key=lambda v: tuple(map(int, v.split(".")))) == tool.WHEEL_TORCH
    environment = (REPO / "environment.yml").read_text()
    assert f"- torch=={tool.WHEEL_TORCH}\n" in environment and f"mamba-ssm=={tool.RELEASE}" in environment
    assert 'MAMBA_KEEP_CUDA_BUILD: "TRUE"' in environment
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch == ["torch>=2.6"]  # the oldest torch with a mamba-ssm wheel; no upper bound
    assert min(tool.WORKFLOW_MATRIX["torch"], key=lambda v: tuple(map(int, v.split(".")))).startswith("2.6")


def test_the_tool_imports_no_torch_at_module_level():
    program = f"import runpy, sys; runpy.run_path({str(REPO / 'tools/mamba_ssm_wheel.py')!r}); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout == "False\n"


# --------------------------------------------------------------------------- the download


def fake_torch_wheel(folder: Path, version="2.10.0+cu128", cuda="12.8", arch="x86_64") -> Path:
    path = folder / f"torch-{version}-cp311-cp311-manylinux_2_28_{arch}.whl"
    with zipfile.ZipFile(path, "w") as wheel:  # the lines of a real torch wheel's torch/version.py
        wheel.writestr("torch/version.py", f"from typing import Optional\n\n__all__ = ['__version__', 'cuda']\n"
                                           f"__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = "
                                           f"{repr(cuda) if cuda else 'None'}\n")
    return path


@pytest.fixture
def release_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/release as the release's download folder."""
    root = tmp_path / "release"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_tool(*args, env_url=None):
    env = dict(os.environ, MAMBA_SSM_RELEASE_URL=env_url) if env_url else None
    return subprocess.run([sys.executable, str(REPO / "tools/mamba_ssm_wheel.py"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_torch_wheel_is_read_and_its_mamba_ssm_wheel_downloaded(tmp_path, release_server):
    root, url = release_server
    name = "mamba_ssm-2.3.2.post1+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    (root / name).write_bytes(b"the release asset")
    torch_wheel = fake_torch_wheel(tmp_path)
    assert tool.describe_torch_wheel(str(torch_wheel)) == {"torch": "2.10.0+cu128", "cuda": "12.8", "abi": "TRUE",
                                                            "arch": "x86_64"}
    assert tool.describe_torch_wheel(str(fake_torch_wheel(tmp_path, "2.6.0", "12.4")))["abi"] == "FALSE"
    out = tmp_path / "wheels"
    got = run_tool("--torch-wheel", str(torch_wheel), "--python", "3.12", "--download", str(out),
                   env_url=url)
    assert got.returncode == 0, got.stderr
    assert (out / name).read_bytes() == b"the release asset" and [p.name for p in out.iterdir()] == [name]
    missing = run_tool("--torch-wheel", str(torch_wheel), "--python", "3.11", "--download", str(out), env_url=url)
    assert missing.returncode == 2 and "404" in missing.stderr and "--mamba-wheel FILE" in missing.stderr
    assert [p.name for p in out.iterdir()] == [name]  # no partial file left behind
    off_path = run_tool("--torch-wheel", str(fake_torch_wheel(tmp_path, "2.13.0", "12.8")), "--download", str(out))
    assert off_path.returncode == 1 and "COMPILE" in off_path.stdout
    bad = run_tool("--torch-wheel", str(tmp_path / "nothing.whl"))
    assert bad.returncode == 2 and "cannot read --torch-wheel" in bad.stderr and "Traceback" not in bad.stderr
