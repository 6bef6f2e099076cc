#!/usr/bin/env bash
# One device call that measures everything issue 16 (GPU path) asks for, within 8 minutes.
#
#   bash bench/gpu_check.sh [OUTDIR]            # default: $OUT, else bench/results/gpu
#   bash bench/gpu_check.sh --dry-run [OUTDIR]  # no GPU needed: set up imports, print the plan
#
# Steps (each with its own timeout, all inside GPU_CHECK_BUDGET_S, default 480 s):
#   env        nvidia-smi, driver, torch / triton / timm / python versions, commit -> env.json
#   imports    make `elastic.*` importable: as installed, else `pip install --no-deps
#              --no-build-isolation -e .`, else copy elastic/ + anchors kernels serving bench
#              into one folder on PYTHONPATH (DESIGN.md); python runs with -P from then on, so
#              the checkout's own elastic/ folder never shadows it
#   gpu-tests  the tests marked `gpu`, in their own pytest process with the interpreter off
#              (TRITON_INTERPRET=0; tests/conftest.py sets 1 only when it is unset)
#   kernels    bench/kernels_gpu.py -> kernels_gpu.json (correctness, speed, host path)
#   graphs     bench/cuda_graphs_gpu.py -> cuda_graphs.json (CUDAGraphExecutor vs eager on
#              DeiT Ti/S/B subnets: latency, order by FLOPs, switching cost, graph memory)
#   bench-*    `elastic bench overhead|parity|switching|load --quick --device cuda` when
#              `elastic bench --help` offers --device and a saved model is there
#              (ELASTIC_MODEL, default out/demo/model: carry it into the device call);
#              otherwise the step is recorded as skipped, with the reason
# Every step's output goes to OUTDIR/<step>.log and its exit status to OUTDIR/steps.tsv;
# summary.json gathers them. The script exits 0 unless a step failed.
#
# Env: PYTHON (python3), ELASTIC_MODEL, GPU_CHECK_BUDGET_S (480), GPU_CHECK_FORCE_SHIM=1
# (skip the installed / pip routes: test the copy route).
set -u

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:-${OUT:-$REPO/bench/results/gpu}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
case $PY in /*) ;; */*) PY="$PWD/$PY" ;; esac # steps run from other folders
MODEL=${ELASTIC_MODEL:-$REPO/out/demo/model}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
STEPS="$OUTDIR/steps.tsv"
printf 'step\tstatus\tseconds\tnote\n' >"$STEPS"
FAILED=0

record() { # step status seconds note
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
    echo "== $1: $2 (${3}s) $4"
}

# step NAME TIMEOUT_S CMD...: run CMD with its output in NAME.log, within the time left
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 5))
    if [ "$left" -lt 10 ]; then
        record "$name" skipped 0 "time budget of ${BUDGET}s spent"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$DRY" = 1 ]; then
        record "$name" dry-run 0 "timeout ${limit}s: $*"
        return 0
    fi
    local t0 rc
    t0=$(date +%s)
    (cd "$REPO" && timeout -k 10 "$limit" "$@") >"$OUTDIR/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
        record "$name" ok $(($(date +%s) - t0)) ""
    else
        FAILED=1
        local why="exit $rc"
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && why="timed out after ${limit}s"
        record "$name" failed $(($(date +%s) - t0)) "$why (see $name.log)"
    fi
}

# ---- env -----------------------------------------------------------------------------
{
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
} >"$OUTDIR/nvidia-smi.txt"
"$PY" - "$OUTDIR/env.json" "$REPO" <<'EOF' >/dev/null 2>"$OUTDIR/env.log"
import json, platform, subprocess, sys, time
out, repo = sys.argv[1], sys.argv[2]
env = {"python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
for name in ("torch", "triton", "timm"):
    try:
        env[name] = __import__(name).__version__
    except Exception as e:
        env[name] = f"not importable ({type(e).__name__})"
try:
    import torch
    env["cuda_available"] = torch.cuda.is_available()
    env["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
except Exception as e:
    env["cuda_available"] = f"error ({type(e).__name__}: {e})"
try:
    q = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    env["driver"] = subprocess.run(q, capture_output=True, text=True, timeout=20).stdout.strip() or None
except Exception:
    env["driver"] = None
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
env["commit"] = rev.stdout.strip() or None
json.dump(env, open(out, "w"), indent=1)
EOF
record env "$([ -s "$OUTDIR/env.json" ] && echo ok || echo failed)" 0 "env.json, nvidia-smi.txt"

# ---- imports ---------------------------------------------------------------------------
# -P: the script's or cwd's folder is not put first on sys.path (Python >= 3.11)
PYP=("$PY")
"$PY" -P -c "" 2>/dev/null && PYP=("$PY" -P)
importable() { (cd /tmp && "${PYP[@]}" -c "import elastic.kernels, elastic.serving, elastic.bench" >/dev/null 2>&1); }
ROUTE=""
if [ "${GPU_CHECK_FORCE_SHIM:-0}" != 1 ]; then
    if importable; then
        ROUTE=installed
    elif timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >"$OUTDIR/pip.log" 2>&1 && importable; then
        ROUTE=pip-editable
    fi
fi
if [ -z "$ROUTE" ]; then
    SHIM=$(mktemp -d)/site
    mkdir -p "$SHIM"
    cp -r "$REPO/elastic" "$SHIM/elastic"
    for d in anchors kernels serving bench; do
        rm -rf "$SHIM/elastic/$d"
        cp -r "$REPO/$d" "$SHIM/elastic/$d"
    done
    find "$SHIM" -name __pycache__ -prune -exec rm -rf {} +
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    ROUTE="copy:$SHIM"
    importable || ROUTE="none (copy route failed too)"
fi
WHERE=$(cd /tmp && "${PYP[@]}" -c "import elastic.kernels as k; print(k.__file__)" 2>&1 | tail -1)
record imports "$(case $ROUTE in none*) echo failed ;; *) echo ok ;; esac)" 0 "route $ROUTE; python ${PYP[*]}; elastic.kernels from $WHERE"
case $ROUTE in none*)
    FAILED=1
    ;;
esac

# ---- GPU tests -------------------------------------------------------------------------
mapfile -t GPU_TESTS < <(cd "$REPO" && grep -rl --include='test_*.py' "pytest.mark.gpu" tests | sort)
step gpu-tests 150 env TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 "${PYP[@]}" -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml="$OUTDIR/gpu-tests.xml" "${GPU_TESTS[@]}"

# ---- kernels ---------------------------------------------------------------------------
step kernels 170 env HF_HUB_OFFLINE=1 "${PYP[@]}" bench/kernels_gpu.py --budget-s 80 --out "$OUTDIR/kernels_gpu.json"

# ---- CUDA graphs: eager vs graphs per subnet, ordering by FLOPs, switching, memory -------
step graphs 120 env HF_HUB_OFFLINE=1 "${PYP[@]}" bench/cuda_graphs_gpu.py --budget-s 60 --out "$OUTDIR/cuda_graphs.json"

# ---- elastic bench suites on the GPU ---------------------------------------------------
HELP=$(cd /tmp && HF_HUB_OFFLINE=1 timeout 60 "${PYP[@]}" -m elastic.cli bench --help 2>&1)
echo "$HELP" >"$OUTDIR/bench-help.txt"
SUITES=(overhead parity switching load)
LIMITS=(45 45 45 90)
for i in "${!SUITES[@]}"; do
    suite=${SUITES[$i]}
    if ! grep -q -- "--device" <<<"$HELP"; then
        record "bench-$suite" skipped 0 "elastic bench has no --device option at this commit (bench-help.txt)"
    elif ! grep -q -- "$suite" <<<"$HELP"; then
        record "bench-$suite" skipped 0 "elastic bench has no '$suite' suite"
    elif [ ! -f "$MODEL/manifest.json" ]; then
        record "bench-$suite" skipped 0 "no saved model at $MODEL (set ELASTIC_MODEL or carry out/demo/model)"
    else
        step "bench-$suite" "${LIMITS[$i]}" env HF_HUB_OFFLINE=1 "${PYP[@]}" -m elastic.cli bench "$suite" --quick \
            --device cuda --model "$MODEL" --out "$OUTDIR/bench"
    fi
done

# ---- summary ---------------------------------------------------------------------------
"$PY" - "$OUTDIR" "$DRY" "$(($(date +%s) - START))" "$0 $*" <<'EOF'
import csv, json, pathlib, sys
out, dry, elapsed, command = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
steps = list(csv.DictReader(open(out / "steps.tsv"), delimiter="\t"))
env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
summary = dict(command=command, dry_run=dry, elapsed_s=elapsed, env=env, steps=steps,
               results=sorted(str(p.relative_to(out)) for p in out.rglob("*.json") if p.name != "summary.json"))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
echo "== wrote $OUTDIR ($(($(date +%s) - START)) s)"
exit $FAILED
