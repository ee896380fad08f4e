#!/usr/bin/env bash
# The GPU path of medssl in one go, sized for a short GPU slot (under 8 minutes on one GPU):
#   1. environment   torch / CUDA / GPU / driver, and every Python package the steps need
#   2. gpu tests     pytest -m gpu tests/system/test_gpu.py: bf16-mixed and 16-mixed fine-tuning and pretraining
#                    steps with channels_last, a pretrain -> fine-tune chain writing predictions
#   3. throughput    benchmarks/train_throughput.py on CUDA: BYOL and fine-tuning, ResNet-50 at 224 px,
#                    bf16-mixed, channels_last, batch 64 (real pipeline vs in-memory tensors, and whatever
#                    other modes that script reports)
# and writes ONE JSON of results: OUT/gpu_check.json (steps with exit codes and seconds, the environment,
# every GPU test's outcome and time, the throughput figures). It installs nothing: it runs $PYTHON
# (default python3, which must hold the project's requirements) on this checkout (PYTHONPATH).
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
# --dry-run needs no GPU: the same three steps with the packages checked, the GPU tests only collected,
# and the throughput benchmark run on CPU at toy size; tested on CPU by tests/system/test_gpu.py so that a GPU
# slot is never lost to a broken script. Each step has a time cap (90 + 240 + 180 s on a GPU), so a hang
# costs at most 8.5 minutes. Exit status: 0 all steps passed, 1 a step failed (the JSON
# says which), 2 bad option, 3 packages missing or no GPU (nothing else was run).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=""
DRY=0
while (( $# )); do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        --out=*) OUT=${1#--out=} ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (expected --out DIR, --dry-run)" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$ROOT/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export MEDSSL_CACHE_DIR=${MEDSSL_CACHE_DIR:-$(mktemp -d /tmp/medssl-gpu-check.XXXXXX)}
STEPS=$OUT/.steps.jsonl
: >"$STEPS"
T_START=$(date +%s.%N)

step() {  # step NAME TIMEOUT_S COMMAND... : run it, log to OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2; shift 2
    local log="$OUT/${name// /-}.log" t0 rc
    echo "gpu_check: $name: $*" >&2
    t0=$(date +%s.%N)
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    "$PY" - "$STEPS" "$name" "$rc" "$t0" "$(date +%s.%N)" "$log" "$*" <<'PY'
import json, sys
path, name, rc, t0, t1, log, cmd = sys.argv[1:]
with open(path, "a") as f:
    f.write(json.dumps({"name": name, "rc": int(rc), "seconds": round(float(t1) - float(t0), 1), "log": log,
                        "command": cmd, "timed_out": int(rc) == 124}) + "\n")
PY
    tail -n 3 "$log" | sed "s/^/gpu_check:   /" >&2
    return $rc
}

# ---------------------------------------------------------------- 1. environment
step environment 90 "$PY" - "$OUT/env.json" "$DRY" <<'PY'
import importlib, json, platform, shutil, subprocess, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
need = ["torch", "torchvision", "timm", "segmentation_models_pytorch", "lightly", "lightning_fabric", "monai",
        "nibabel", "numpy", "scipy", "pandas", "yaml", "skimage", "pytest", "medssl_utils"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report every package that cannot be imported
        missing.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
import torch
env = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine(),
       "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "missing": missing}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
               gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
               cudnn=torch.backends.cudnn.version())
if shutil.which("nvidia-smi"):
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True)
    env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
json.dump(env, open(out, "w"), indent=2)
print(json.dumps(env, indent=2))
if missing:
    print("missing Python packages (carry them as wheels, docs/gpu.md: The GPU check): " + "; ".join(missing))
    sys.exit(3)
if not dry and not torch.cuda.is_available():
    print("no CUDA GPU visible to torch: run this on a GPU machine, or --dry-run to check the script on CPU")
    sys.exit(3)
PY
ENV_RC=$?

# ---------------------------------------------------------------- 2. GPU tests, 3. throughput
if (( ENV_RC == 0 )); then
    if (( DRY )); then
        step "gpu tests" 240 "$PY" -m pytest -q -p no:cacheprovider --collect-only -m gpu "$ROOT/tests/system/test_gpu.py"
        step throughput 300 "$PY" "$ROOT/benchmarks/train_throughput.py" --device cpu --precision 32 \
            --encoder test_resnet --image-size 32 --batch-size 4 --steps 2 --warmup 1 \
            --spec "phantom:cardiac?cases=4" --out "$OUT/throughput.json"
    else
        step "gpu tests" 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA --durations=0 \
            --junitxml="$OUT/gpu-tests.xml" "$ROOT/tests/system/test_gpu.py"
        step throughput 180 "$PY" "$ROOT/benchmarks/train_throughput.py" --device cuda --precision bf16-mixed \
            --channels-last --encoder resnet50 --image-size 224 --batch-size 64 --out "$OUT/throughput.json"
    fi
fi

# ---------------------------------------------------------------- one JSON of results
"$PY" - "$OUT" "$DRY" "$T_START" "$(date +%s.%N)" "$ROOT" <<'PY'
import json, re, subprocess, sys, xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
out, dry, t0, t1, root = Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

def read(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None

steps = [json.loads(line) for line in (out / ".steps.jsonl").read_text().splitlines() if line.strip()]
tests = {}
xml = out / "gpu-tests.xml"
if xml.is_file():
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], el.get("message")
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message})
    tests = {"cases": cases, **{k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}}
else:
    log = out / "gpu-tests.log"
    text = log.read_text() if log.is_file() else ""
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    tests = {"collected": int(m.group(1)) if m else 0}
try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = None
ok = len(steps) == 3 and all(s["rc"] == 0 for s in steps)
if not dry and ok:
    ok = tests.get("passed", 0) > 0 and not tests.get("failed") and not tests.get("error") and not tests.get("skipped")
result = {"dry_run": dry, "ok": ok, "commit": commit, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "seconds": round(t1 - t0, 1), "steps": steps, "env": read("env.json"), "tests": tests,
          "throughput": read("throughput.json")}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(f"gpu_check: {'ok' if ok else 'FAILED'} in {result['seconds']} s; results in {out / 'gpu_check.json'}")
sys.exit(0 if ok else 1)
PY
RC=$?
if (( ENV_RC == 3 )); then exit 3; fi
exit $RC
