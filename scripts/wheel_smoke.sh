#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment (with its dependencies, torch pinned by
# constraints.txt), then checks its contents (the package only: no tests) and version, imports every module
# and runs the CLI from outside the repository.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "wheel smoke: building the wheel, installing it with its dependencies into a fresh venv in $work"
echo "  (torch and the rest, ~2 GB), then importing every module and training 2 steps from outside the checkout"
"$python" -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
"$python" -m venv "$work/venv"
# shellcheck disable=SC2086
"$work/venv/bin/python" -m pip install -q ${TORCH_PIP_ARGS:-} -c "$repo/constraints.txt" torch==2.13.0
"$work/venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "$wheel"

cd "$work"  # nowhere near the repository: only the installed package can be imported
"$work/venv/bin/python" - "$wheel" <<'PY'
import importlib, importlib.metadata, pkgutil, sys, zipfile
import blip3o_rl
assert blip3o_rl.__version__ == importlib.metadata.version("blip3o-rl"), blip3o_rl.__version__
assert [m for m in sys.modules if m.startswith("blip3o_rl.")] == [], "import blip3o_rl imported a subpackage"
files = zipfile.ZipFile(sys.argv[1]).namelist()
# Only the package and its metadata: no tests, docs, build outputs or anything else from the repository root.
stray = [n for n in files if not n.startswith(("blip3o_rl/", "blip3o_rl-"))]
stray += [n for n in files if n.startswith(("blip3o_rl/tests/", "blip3o_rl/docs/", "blip3o_rl/build/"))]
assert not stray, stray
names = sorted({m.name for p in blip3o_rl.__path__ for m in pkgutil.walk_packages([p], "blip3o_rl.")})
for name in names:
    mod = importlib.import_module(name)
    assert "/site-packages/" in (mod.__file__ or ""), f"{name} imported from {mod.__file__}"
recipes = [n for n in files if n.startswith("blip3o_rl/configs/")]
assert any(n.endswith("demo.yaml") for n in recipes) and any(n.endswith(".jsonl") for n in recipes), recipes
print(f"wheel smoke: blip3o_rl {blip3o_rl.__version__}; imported {len(names)} modules from site-packages; "
      f"{len(recipes)} packaged recipe files; {len(files)} files in the wheel, no tests")
PY
"$work/venv/bin/blip3o-rl" --help >/dev/null
"$work/venv/bin/blip3o-rl" config demo max_steps=2 >/dev/null
"$work/venv/bin/blip3o-rl" train demo max_steps=2 output_dir="$work/run" model.build.sft_steps=2 \
    eval.eval_every=0 logging.progress_bar=false >"$work/train.log" 2>&1 || { cat "$work/train.log"; exit 1; }
test -s "$work/run/metrics.jsonl" && test -s "$work/run/reward_curve.png"
echo "wheel smoke: 'blip3o-rl train demo' ran 2 steps from the installed wheel"
