#!/usr/bin/env bash
# Prepares what scripts/gpu_check.py needs on the air-gapped GPU machine, and says how to run it there.
#
#     scripts/gpu_check.sh            # wheels + size check + the command (first run ~2 min, then ~1 s)
#     scripts/gpu_check.sh --verify   # then checks them here, offline (~3-4 min on 2 cores)
#
# The GPU machine: one H200, Python 3.12, a stock PyTorch image (torch 2.11, torchaudio, peft,
# transformers, safetensors, pyarrow, numpy, tqdm and what those pull in: accelerate, psutil,
# PyYAML, tokenizers, packaging, huggingface_hub, setuptools, ...), no network, and at most 64 MiB
# of files per call: the repository as git sees it (tracked + untracked non-ignored files) plus up
# to 8 ignored paths named as `carry`. gpu_check.py runs the trainer on plain torch.distributed,
# so Ray (a 79 MB wheel) and W&B (tracking off) stay here; what it imports beyond the image goes
# along as cp312 wheels in ONE ignored folder, installed there with `pip --target`.
#
# 1. fills .cache/gpu-wheels/ with those wheels, at the versions of this project's .venv
#    (anything else in the folder is removed: the command there installs *.whl);
# 2. adds up what travels (the repository's files + that folder) against the 64 MiB; exits 1
#    when over;
# 3. prints the command to run from the repository root on the GPU machine, and the carry path.
#
# --verify then, offline:
#   a. installs the wheels with `pip install --no-index --target` under a Python 3.12 (their
#      cp312 tags, the LZMA-packed ones), and imports the compiled ones there;
#   b. builds a stand-in image from .venv: a bare venv that sees only the image's packages and
#      their requirements (as Python 3.12 reads them) plus the bundle (its pure-Python wheels as
#      installed in (a), compiled ones at the same version from .venv, which is Python 3.11);
#      imports every ltx_ray module there and lists what the image would lack;
#   c. runs `scripts/gpu_check.py --cpu` in that stand-in (GPU_CHECK_ARGS overrides `--cpu`).
#   .venv's torch is 2.9.1 and the machine's 2.11: (b) and (c) check which modules the path needs,
#   not that torch version.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHEELS=.cache/gpu-wheels      # ignored through `.cache/` in .gitignore: it travels as `carry`
SITE=.cache/gpu-site          # where the GPU machine installs them (the repository root is writable)
BUDGET_MIB=64
VENV_PY=.venv/bin/python

# What gpu_check.py imports that the image lacks (from the imports of ltx_ray and of
# scripts/gpu_check.py, and the packages' metadata; --verify (b) lists what is still missing):
#   ltx-core        the model code (needs einops and scipy; accelerate, transformers, safetensors,
#                   torch(audio) and numpy are in the image)
#   scipy           ltx_core.components.schedulers imports it at the top (only its BetaScheduler
#                   uses it), and the sampler (previews, `ltx-ray generate`, the estimator's
#                   guidance) imports that module
#   deepspeed       built here as a pure-Python wheel (DS_BUILD_OPS=0): no op is compiled, and
#                   the job's optimizer is torch's AdamW (`torch_adam`), so none is JIT-built there
#   einops hjson msgpack psutil py-cpuinfo pydantic
#                   DeepSpeed's requirements (psutil is in the image too, via peft/accelerate)
#   pydantic-core annotated-types typing-inspection typing-extensions
#                   pydantic's; typing-extensions is in the image too (torch), but pydantic may
#                   need a newer one than torch asks for
#   omegaconf       config loading (2.4 vendors antlr4: no antlr4-python3-runtime)
#   av              PyAV: probing, decoding and the reel/mp4 writing (an abi3 wheel: loads on 3.12)
# Left out: ray, wandb (not on this path); ninja (DeepSpeed requires it only to JIT-build ops,
# which the CUDA path does not, and a --target install would not put its binary on PATH);
# packaging, PyYAML, tokenizers, setuptools (in the image).
PACKAGES=(ltx-core scipy deepspeed einops hjson msgpack psutil py-cpuinfo pydantic pydantic-core
          annotated-types typing-inspection typing-extensions omegaconf av)
# The image's own packages, for --verify's stand-in.
IMAGE_PACKAGES=(torch torchaudio peft transformers safetensors pyarrow numpy tqdm)
# Wheels larger than this are repacked with LZMA (below).
REPACK_OVER_BYTES=$(( 1024 * 1024 ))

die() { echo "gpu_check.sh: $*" >&2; exit 1; }

verify=0
case "${1:-}" in
  "") ;;
  --verify) verify=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (usage: scripts/gpu_check.sh [--verify])" ;;
esac

[[ -x "$VENV_PY" ]] || die "no $VENV_PY: run 'make setup' first (its versions are the ones taken)"

# pip, with the notes about the absent local index folders left out.
pip_() { "$VENV_PY" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; }

# --- 1. the wheels ---------------------------------------------------------------------------
# name==version as installed in .venv.
mapfile -t SPECS < <("$VENV_PY" - "${PACKAGES[@]}" <<'PY'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"gpu_check.sh: {name} is not installed in .venv: run 'make setup' first")
PY
)
(( ${#SPECS[@]} == ${#PACKAGES[@]} )) || die "could not read the versions from .venv"
# How a wheel of name==version starts (PEP 427: - and . in the name become _; any case).
stem() { local n="${1%%==*}"; n="${n//[-.]/_}"; echo "${n,,}-${1#*==}-"; }
have() {  # have DIR SPEC
  local f; for f in "$1"/*.whl; do
    [[ -e "$f" ]] && f="$(basename "$f")" && [[ "${f,,}" == "$(stem "$2")"* ]] && return 0
  done; return 1
}

mkdir -p "$WHEELS"
# A wheel lands in $WHEELS only once complete (built or downloaded, checked, repacked): an
# interrupted run leaves its pieces in .incoming/, cleared here.
INCOMING="$WHEELS/.incoming"
rm -rf -- "$INCOMING"
# Anything not in the list (an older version, a package dropped from it) would be installed by
# the `*.whl` there, and would count against the budget: remove it.
for f in "$WHEELS"/* "$WHEELS"/.[!.]*; do
  [[ -e "$f" ]] || continue
  base="$(basename "$f")"; keep=0
  for s in "${SPECS[@]}"; do [[ "$base" == *.whl && "${base,,}" == "$(stem "$s")"* ]] && keep=1; done
  (( keep )) || { echo "removing $WHEELS/$base (not one of the wheels at .venv's versions)"; rm -rf -- "$f"; }
done

missing=()
for s in "${SPECS[@]}"; do have "$WHEELS" "$s" || missing+=("$s"); done
if (( ${#missing[@]} )); then
  mkdir -p "$INCOMING"
  others=()
  for s in "${missing[@]}"; do
    if [[ "$s" == deepspeed==* ]]; then
      # DeepSpeed ships only an sdist. DS_BUILD_OPS=0 compiles no C++/CUDA op, so the wheel is pure
      # Python; --no-cache-dir so that the variable applies rather than whatever built pip's
      # cached wheel.
      echo "building $s (DS_BUILD_OPS=0)"
      DS_BUILD_OPS=0 pip_ wheel --quiet --no-cache-dir --no-deps --no-binary deepspeed "$s" -w "$INCOMING"
    else
      others+=("$s")
    fi
  done
  if (( ${#others[@]} )); then
    echo "downloading ${others[*]}"
    # Wheels for the GPU machine's interpreter (CPython 3.12, x86_64 glibc), whatever runs here.
    pip_ download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$INCOMING" "${others[@]}"
  fi
  for s in "${missing[@]}"; do have "$INCOMING" "$s" || die "no wheel for $s (see pip's output above)"; done
fi

# Checks and repacks the new wheels, then moves them into $WHEELS (and does the same, in place,
# for the ones already there: a no-op once done).
# - The DeepSpeed wheel must hold no compiled op: one would be tied to this machine's torch and
#   CUDA, and the GPU machine has neither this torch nor, perhaps, a compiler.
# - Wheels over REPACK_OVER_BYTES are rewritten with LZMA instead of deflate: the same files and
#   RECORD, byte for byte, in a zip ~25 % smaller (scipy 33.6 -> 25.2 MiB, av 34.1 -> 25.5 MiB),
#   without which scipy + av alone would take 68 MiB of the 64. pip extracts wheels with Python's
#   zipfile, which reads LZMA members (with the standard lzma module).
"$VENV_PY" - "$INCOMING" "$WHEELS" "$REPACK_OVER_BYTES" <<'PY'
import ast, os, re, sys, zipfile
from pathlib import Path
incoming, wheels, over = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for whl in sorted(incoming.glob("*.whl")) + sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        if whl.name.lower().startswith("deepspeed-"):
            compiled = [n for n in z.namelist() if n.endswith((".so", ".pyd"))]
            info = z.read("deepspeed/git_version_info_installed.py").decode()
            ops = ast.literal_eval(re.search(r"installed_ops=(\{.*\})", info).group(1))
            if compiled or any(ops.values()):
                sys.exit(f"gpu_check.sh: {whl.name} has compiled ops ({compiled or ops}): build it with DS_BUILD_OPS=0")
        if whl.stat().st_size > over and any(i.compress_type == zipfile.ZIP_DEFLATED and i.file_size > 4096
                                             for i in z.infolist()):
            print(f"repacking {whl.name} with LZMA (once; up to a minute) ...", end=" ", flush=True)
            tmp = whl.with_suffix(".lzma-tmp")
            with zipfile.ZipFile(tmp, "w") as out:
                for info in z.infolist():
                    data = z.read(info)
                    new = zipfile.ZipInfo(info.filename, info.date_time)
                    new.external_attr = info.external_attr  # file modes (executables)
                    # Small members gain nothing from LZMA's larger headers.
                    new.compress_type = zipfile.ZIP_LZMA if len(data) > 4096 else zipfile.ZIP_DEFLATED
                    out.writestr(new, data)
            print(f"{whl.stat().st_size / 2**20:.2f} -> {tmp.stat().st_size / 2**20:.2f} MiB")
            os.replace(tmp, whl)
    if whl.parent == incoming:
        os.replace(whl, wheels / whl.name)
PY
rm -rf -- "$INCOMING"

# --- 2. what travels -------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
# The device tool copies the tracked and untracked non-ignored files (`git ls-files -co
# --exclude-standard`; a tracked file deleted here is not there), plus everything in the carried
# folder.
repo_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
carry_bytes=$(find "$WHEELS" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
echo
echo "$WHEELS:"
for f in "$WHEELS"/*.whl; do printf '  %8s MiB  %s\n' "$(mib "$(stat -c %s -- "$f")")" "$(basename "$f")"; done
total=$(( repo_bytes + carry_bytes ))
printf '  %8s MiB  (the folder)\n  %8s MiB  (the repository: git ls-files -co --exclude-standard)\n' \
  "$(mib "$carry_bytes")" "$(mib "$repo_bytes")"
printf 'total %s MiB of the %s MiB a call may take\n' "$(mib "$total")" "$BUDGET_MIB"
(( total <= BUDGET_MIB * 1048576 )) || die "over the ${BUDGET_MIB} MiB budget by $(mib $(( total - BUDGET_MIB * 1048576 ))) MiB"

# --- 3. the command --------------------------------------------------------------------------
# --no-index: no network there; --no-deps: the image has the rest; --upgrade: a second run on the
# same machine replaces what an earlier one installed instead of keeping it. The folder comes
# first on PYTHONPATH (and gpu_check.py's rank processes inherit it), so the bundle wins where
# the image has a package too.
GPU_CMD="python -m pip install --quiet --no-index --no-deps --upgrade --target $SITE $WHEELS/*.whl && PYTHONPATH=$SITE:. DS_ACCELERATOR=cuda python scripts/gpu_check.py"
echo
echo "carry: [\"$WHEELS\"]"
echo "command (from the repository root on the GPU machine; gpu_check.py's own arguments go at the end):"
echo "  $GPU_CMD"

(( verify )) || exit 0

# --- --verify ----------------------------------------------------------------------------------
echo
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-verify.XXXXXX")"
trap 'rm -rf -- "$TMP"' EXIT

# a. Install as there, with a Python 3.12. pyenv's shim answers "command not found" when 3.12
# is not the selected version, hence the look into pyenv's versions too.
PY312="${PY312:-}"
if [[ -z "$PY312" ]]; then
  for c in "$(command -v python3.12 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    [[ -n "$c" && -x "$c" ]] && "$c" -c "" 2>/dev/null && { PY312="$c"; break; }
  done
fi
[[ -n "$PY312" ]] || die "--verify needs a Python 3.12 (set PY312=/path/to/python3.12)"
echo "a. pip install --no-index --no-deps --target, with $PY312"
PIP_ROOT_USER_ACTION=ignore "$PY312" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
  --target "$TMP/site" "$WHEELS"/*.whl
# The bundle's modules that need nothing from the image (the others need torch, numpy or PyYAML),
# the compiled ones above all; each must load from the folder.
PYTHONPATH="$TMP/site" "$PY312" -s - "$TMP/site" <<'PY'
import importlib, os, sys
names = ("av", "pydantic_core", "pydantic", "psutil", "msgpack", "hjson", "cpuinfo", "einops",
         "annotated_types", "typing_inspection", "typing_extensions")
for name in names:
    m = importlib.import_module(name)
    assert os.path.realpath(m.__file__).startswith(os.path.realpath(sys.argv[1])), (name, m.__file__)
print(f"   import {', '.join(names)} on Python {sys.version.split()[0]}: ok")
PY

# b. The stand-in image: links to .venv's installed files, in a folder a bare venv (no
# site-packages of its own) gets as PYTHONPATH; gpu_check.py's rank processes inherit both.
"$VENV_PY" -m venv --without-pip "$TMP/venv"
"$VENV_PY" - "$TMP/image" "$TMP/site" "$WHEELS" "${IMAGE_PACKAGES[*]}" "${PACKAGES[*]}" <<'PY'
import importlib.metadata as md, re, sys
from pathlib import Path
from packaging.requirements import Requirement
image, target, wheels = (Path(a) for a in sys.argv[1:4])
image_names, bundle_names = sys.argv[4].split(), sys.argv[5].split()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
# Requirements as the machine's Python 3.12 reads them (torch needs setuptools from 3.12 on).
PY312_MARKERS = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.0"}

def closure(names):
    seen, todo = {}, list(names)
    while todo:
        n = norm(todo.pop())
        if n in seen:
            continue
        try:
            d = seen[n] = md.distribution(n)
        except md.PackageNotFoundError:
            continue  # e.g. a requirement for another platform
        todo += [r.name for r in map(Requirement, d.requires or [])
                 if r.marker is None or r.marker.evaluate(PY312_MARKERS)]
    return seen

def link(dist):
    # The distribution's top-level entries (its dist-info too), once.
    for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
        src, dst = Path(dist.locate_file(top)), image / top
        if src.exists() and not dst.exists():
            dst.symlink_to(src)

image.mkdir()
pure = {norm(w.name.split("-")[0]) for w in wheels.glob("*.whl") if w.name.endswith("-none-any.whl")}
bundle = {norm(n) for n in bundle_names}
for n in sorted(bundle):  # the bundle first: it comes first on PYTHONPATH there
    d = next(md.distributions(path=[str(target)], name=n), None) if n in pure else md.distribution(n)
    link(d or sys.exit(f"gpu_check.sh: {n} is not in {target}"))
for n, d in closure(image_names).items():
    if n not in bundle:
        link(d)
print(f"b. a stand-in image of {len(list(image.iterdir()))} entries: .venv's {' '.join(image_names)} and their "
      f"requirements, plus the bundle")
PY
in_image() { PYTHONPATH="$TMP/image:$ROOT" PYTHONNOUSERSITE=1 "$TMP/venv/bin/python" "$@"; }
DS_ACCELERATOR=cpu in_image - "$TMP/site" <<'PY'
import importlib, os, sys
from pathlib import Path
target = os.path.realpath(sys.argv[1])
for name in ("deepspeed", "ltx_core", "omegaconf", "scipy", "av"):
    where = os.path.realpath(importlib.import_module(name).__file__)
    print(f"   import {name}: {'from the --target folder' if where.startswith(target) else where}")
missing = {}
# Every module file: ltx_ray.train and ltx_ray.sample have no __init__.py, which pkgutil's walk
# would skip.
for path in sorted(Path("ltx_ray").rglob("*.py")):
    name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    if name.endswith("__main__"):
        continue
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing.setdefault((e.name or str(e)).split(".")[0], []).append(name)
    except Exception as e:  # not a missing module, but worth seeing
        print(f"   {name} fails to import: {e!r}")
for top, mods in sorted(missing.items()):
    print(f"   not in the image: {top} (imported by {', '.join(sorted(mods))})")
PY

# c. The check itself, on CPU, in the stand-in: it fails on any module its path needs and lacks.
read -r -a args <<< "${GPU_CHECK_ARGS:---cpu}"
echo "c. scripts/gpu_check.py ${args[*]} in the stand-in image"
in_image scripts/gpu_check.py "${args[@]}" > "$TMP/check.log" 2>&1 \
  || { tail -n 40 "$TMP/check.log" >&2; die "gpu_check.py ${args[*]} failed in the stand-in image"; }
echo "   $(grep '^gpu_check: [0-9]' "$TMP/check.log" | tail -n 1 || tail -n 1 "$TMP/check.log")"
echo "verify: ok"
