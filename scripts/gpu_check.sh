#!/usr/bin/env bash
# The GPU check: for a machine with an NVIDIA GPU and no internet, under 10 minutes on one GPU.
#
#   scripts/gpu_check.sh [WHEEL_DIR] [--out DIR] [--quick] [--python PY] [--build-mamba] [--device cpu]
#       installs what is missing from WHEEL_DIR only (pip --no-index --find-links), prints
#       the versions and the scan backend `auto` takes (with its reason), runs the tests
#       marked gpu (tests/test_gpu.py), then benchmarks/bench_gpu.py, and writes
#       DIR/gpu-check-<host>-<UTC time>.json, .md and .log (DIR default results/).
#   scripts/gpu_check.sh --prepare WHEEL_DIR [--python-version 3.12] [--torch SPEC]
#           [--torch-index URL] [--no-torch] [--have FILE] [--mamba SPEC] [--mamba-wheel FILE]
#           [--mamba-source] [--no-mamba] [--python PY]
#       on a machine WITH internet: downloads into WHEEL_DIR the wheels the check needs
#       for Linux x86_64 and that CPython version (default: this python's), a CUDA torch
#       (default the Makefile's GPU_TORCH, 2.10.0; PyPI's Linux torch is a CUDA build;
#       --torch-index for another CUDA), and the prebuilt mamba-ssm wheel for that torch from
#       mamba-ssm's GitHub release (tools/mamba_ssm_wheel.py names it), so the GPU machine
#       needs no nvcc. Without such a wheel (another torch or Python, --no-torch, or
#       --mamba-source): mamba-ssm's source release (--mamba SPEC, default the Makefile's
#       MAMBA_SSM), which the check compiles only with --build-mamba. --mamba-wheel FILE: a
#       wheel fetched by hand.
#       --have FILE (`python -m pip freeze` of the GPU machine) leaves out what it has.
#
# Installing: a virtual environment (.venv-gpu-check) that sees every package of PY (the
# machine's python; default .venv/bin/python, else python3), so an existing CUDA torch is
# used as it is and only what is missing is installed; PY itself is never changed. Without
# WHEEL_DIR nothing is installed: PY must have everything (e.g. after `make install GPU=1`).
# mamba-ssm: a wheel in WHEEL_DIR is installed; its source release is compiled only with
# --build-mamba (nvcc, for every architecture its setup.py lists: TORCH_CUDA_ARCH_LIST
# does not narrow them; that takes longer than the 10 minutes);
# without it the check runs the no-build parallel scan and says why the kernel is absent.
# --device cpu runs the whole check on the CPU (tests on the CPU, the benchmark tiny): a
# dry run of this script where no GPU is, not a GPU result.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

usage() { sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "gpu_check: $*" >&2; exit 2; }

PY="${GPU_CHECK_PYTHON:-}"
if [[ -z "$PY" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python3; fi

# ------------------------------------------------------------------ the half with internet
prepare() {
    # Defaults: the Makefile's GPU_TORCH and MAMBA_SSM (the one home of those versions).
    local torch_spec mamba
    torch_spec="$(sed -n 's/^GPU_TORCH *?= *//p' Makefile)" mamba="$(sed -n 's/^MAMBA_SSM *?= *//p' Makefile)"
    local dir="" pyver="" torch_index="" no_torch=0 have=""
    local mamba_wheel="" no_mamba=0 mamba_source=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --python-version) pyver="$2"; shift 2 ;;
            --torch) torch_spec="$2"; shift 2 ;;
            --torch-index) torch_index="$2"; shift 2 ;;
            --no-torch) no_torch=1; shift ;;
            --have) have="$2"; shift 2 ;;
            --mamba) mamba="$2"; shift 2 ;;
            --mamba-wheel) mamba_wheel="$2"; shift 2 ;;
            --mamba-source) mamba_source=1; shift ;;
            --no-mamba) no_mamba=1; shift ;;
            --python) PY="$2"; shift 2 ;;
            -h|--help) usage ;;
            -*) die "--prepare: unknown option $1 (see --help)" ;;
            *) [[ -z "$dir" ]] || die "--prepare takes one WHEEL_DIR, got '$dir' and '$1'"; dir="$1"; shift ;;
        esac
    done
    if [[ "$torch_spec" == *" --index-url "* ]]; then  # TORCH="torch==X --index-url URL", as the README shows
        torch_index="${torch_spec#* --index-url }" torch_spec="${torch_spec%% --index-url *}"
    fi
    [[ -n "$dir" ]] || die "--prepare needs a WHEEL_DIR: scripts/gpu_check.sh --prepare .gpu-wheels"
    [[ -z "$have" || -f "$have" ]] || die "--have $have: no such file (write it on the GPU machine: python3 -m pip freeze > have.txt)"
    [[ -z "$mamba_wheel" || -f "$mamba_wheel" ]] || die "--mamba-wheel $mamba_wheel: no such file"
    pyver="${pyver:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
    mkdir -p "$dir"
    local reqs
    reqs="$("$PY" scripts/gpu_check_report.py requirements $([[ $no_mamba == 0 ]] && echo --mamba))" || exit 2
    reqs="$(grep -v '^torch' <<<"$reqs")"
    [[ $no_torch == 1 || -n "$torch_index" ]] || reqs+=$'\n'"$torch_spec"
    local platforms=() n
    for n in $(seq 39 -1 17); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
    echo "gpu_check --prepare: wheels for CPython $pyver, Linux x86_64, into $dir:"; echo "$reqs" | sed 's/^/  /'
    if [[ $no_torch == 0 && -n "$torch_index" ]]; then  # torch and what it needs from that index alone
        echo "  $torch_spec (from $torch_index)"
        "$PY" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" \
            --index-url "$torch_index" -d "$dir" "$torch_spec" || die "pip download of $torch_spec failed (above)"
    fi
    echo "$reqs" > "$dir/.requirements.txt"
    "$PY" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" \
        -d "$dir" -r "$dir/.requirements.txt" \
        || die "pip download failed (above)"
    rm -f "$dir/.requirements.txt"
    if [[ $no_mamba == 0 ]]; then
        local torch_wheel status
        torch_wheel="$(ls "$dir"/torch-*.whl 2>/dev/null | tail -1)"
        if [[ -n "$mamba_wheel" ]]; then
            cp "$mamba_wheel" "$dir/"
        elif [[ $mamba_source == 0 && -n "$torch_wheel" ]]; then  # the release's prebuilt wheel for that torch
            "$PY" tools/mamba_ssm_wheel.py --torch-wheel "$torch_wheel" --python "$pyver" --download "$dir"
            status=$?
            [[ $status == 2 ]] && die "no mamba-ssm wheel (above); --mamba-source takes its source release instead"
            [[ $status == 0 ]] || mamba_source=1
        else
            mamba_source=1
        fi
        if [[ $mamba_source == 1 ]]; then
            # Its setup.py imports torch even to say its name: no build isolation, no kernel build.
            MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$PY" -m pip download --no-deps --no-binary :all: \
                --no-build-isolation -d "$dir" "$mamba" \
                || die "pip download of mamba-ssm's source release failed (its setup.py needs torch in $PY); --no-mamba skips it"
        fi
    fi
    if [[ -n "$have" ]]; then  # what the GPU machine has already stays behind
        local f project
        for f in "$dir"/*.whl; do
            project="$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')"
            if sed 's/[=<>~ ;@[].*//' "$have" | tr 'A-Z_.' 'a-z--' | grep -qx "$project"; then rm -f "$f"; fi
        done
    fi
    echo "gpu_check --prepare: $(ls "$dir" | wc -l) files, $(du -sh "$dir" | cut -f1) in $dir. On the GPU machine:"
    echo "  scripts/gpu_check.sh $dir"
}

if [[ "${1:-}" == "--prepare" ]]; then shift; prepare "$@"; exit $?; fi

# ------------------------------------------------------------------ the check
WHEELS="" OUTDIR=results QUICK=() DEVICE=cuda BUILD_MAMBA=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUTDIR="$2"; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --python) PY="$2"; shift 2 ;;
        --build-mamba) BUILD_MAMBA=1; shift ;;
        --device) DEVICE="$2"; shift 2 ;;
        -h|--help) usage ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$WHEELS" ]] || die "one WHEEL_DIR, got '$WHEELS' and '$1'"; WHEELS="$1"; shift ;;
    esac
done
[[ -z "$WHEELS" || -d "$WHEELS" ]] || die "WHEEL_DIR $WHEELS is not a folder (make it with --prepare)"
command -v "$PY" >/dev/null || die "no python '$PY' (give --python)"
[[ "$DEVICE" == cpu && ${#QUICK[@]} -eq 0 ]] && QUICK=(--tiny)

NAME="gpu-check-$(hostname -s 2>/dev/null || hostname)-$(date -u +%Y%m%dT%H%MZ)$([[ $DEVICE == cpu ]] && echo -cpu)"
mkdir -p "$OUTDIR" || die "cannot write to $OUTDIR"
PREFIX="$OUTDIR/$NAME"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dm-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
exec > >(tee "$PREFIX.log") 2>&1
: > "$WORK/phases.tsv"
phase() {  # phase NAME COMMAND...: run, time and record it
    local name="$1" start status; shift
    echo; echo "=== gpu_check: $name"
    start=$(date +%s%N)
    "$@"; status=$?
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%d.%03d\t%d\n' "$name" $((ms / 1000)) $((ms % 1000)) "$status" >> "$WORK/phases.tsv"
    return $status
}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not an installed copy

install() {
    local venv="${GPU_CHECK_VENV:-$REPO/.venv-gpu-check}"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$PY" -m venv --system-site-packages --without-pip "$venv" || return 1
    fi
    # Every site-packages folder of PY, after the venv's own: its packages count as installed.
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))' \
        > "$site/_gpu_check_base.pth" || return 1
    "$venv/bin/python" -m pip --version >/dev/null || { echo "no pip importable from $PY"; return 1; }
    VPY="$venv/bin/python"
    local cons="$WORK/constraints.txt" torch_cuda mamba=()
    torch_cuda="$("$VPY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)"
    if [[ -n "$torch_cuda" || "$DEVICE" == cpu ]] && "$VPY" -c 'import torch' 2>/dev/null; then
        "$VPY" -c 'import torch; print("torch==" + torch.__version__)' > "$cons"  # the torch there stays
        echo "torch: $(cat "$cons") (CUDA ${torch_cuda:-none}) is there; kept"
    else
        local wheel
        wheel="$(ls "$WHEELS"/torch-*.whl 2>/dev/null | tail -1)"
        [[ -n "$wheel" ]] || { echo "no CUDA torch in $PY and none in $WHEELS: prepare the wheels without --no-torch"; return 1; }
        echo "torch: none with CUDA in $PY; installing $wheel (what it needs comes with the rest, below)"
        # --ignore-installed: a CPU torch of the same version there must not count as installed.
        "$VPY" -m pip install --no-index --no-deps --ignore-installed "$wheel" || return 1
        "$VPY" -c 'import torch; print("torch==" + torch.__version__)' > "$cons" || return 1
    fi
    if ls "$WHEELS"/mamba_ssm-*.whl >/dev/null 2>&1 || { [[ $BUILD_MAMBA == 1 ]] && ls "$WHEELS"/mamba_ssm-*.tar.gz >/dev/null 2>&1; }; then
        mamba=(--mamba)
    fi
    local reqs="$WORK/requirements.txt"
    "$VPY" scripts/gpu_check_report.py requirements "${mamba[@]}" > "$reqs" || return 1
    "$VPY" -m pip install --no-index --find-links "$WHEELS" -c "$cons" -r "$reqs" || return 1
    if ls "$WHEELS"/mamba_ssm-*.whl >/dev/null 2>&1; then
        "$VPY" -m pip install --no-index --no-deps "$(ls "$WHEELS"/mamba_ssm-*.whl | tail -1)" || return 1
    elif [[ ${#mamba[@]} -gt 0 ]]; then  # --build-mamba: nvcc compiles the kernel
        echo "compiling mamba-ssm's kernel (MAX_JOBS=$(nproc); 15-35 minutes on many cores)"
        "$VPY" tools/mamba_ssm_wheel.py  # the nvcc and torch CUDA versions, which must share their major
        MAMBA_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE MAX_JOBS="$(nproc)" \
            "$VPY" -m pip install --no-index --no-deps --no-build-isolation "$(ls "$WHEELS"/mamba_ssm-*.tar.gz | tail -1)" \
            || return 1
    elif ls "$WHEELS"/mamba_ssm-*.tar.gz >/dev/null 2>&1; then
        echo "mamba-ssm: only its source release is in $WHEELS; not compiled (--build-mamba does)"
    fi
}

VPY="$PY"
STATUS=0
if [[ -n "$WHEELS" ]]; then
    phase install install || {
        "$PY" scripts/gpu_check_report.py report "$WORK" "$PREFIX" >/dev/null
        die "installing from $WHEELS failed (above); wrote $PREFIX.md and $PREFIX.log"; }
fi
phase info "$VPY" scripts/gpu_check_report.py info "$DEVICE" "$WORK/info.json" || {
    "$VPY" scripts/gpu_check_report.py report "$WORK" "$PREFIX" >/dev/null; die "no usable device (above); wrote $PREFIX.md"; }
TESTS=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
phase tests env DM_TEST_DEVICE="$DEVICE" "$VPY" -m pytest -m gpu $TESTS -q -rs -p no:cacheprovider -p no:xdist \
    --junitxml="$WORK/junit.xml" || STATUS=1
phase bench "$VPY" benchmarks/bench_gpu.py --device "$DEVICE" "${QUICK[@]}" --out "$WORK/bench.md" \
    --json "$WORK/bench.json" || STATUS=1
echo; echo "=== gpu_check: report"
"$VPY" scripts/gpu_check_report.py report "$WORK" "$PREFIX" || STATUS=1
echo; echo "gpu_check: wrote $PREFIX.json, $PREFIX.md and $PREFIX.log"
exit $STATUS
