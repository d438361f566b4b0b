#!/usr/bin/env bash
# End-to-end GPU check of wsi-deepr (issue 14, item 6), one script, <= 8 minutes.
#
# On a GPU machine:
#   1. makes a fresh venv, installs wsi-deepr from this checkout and
#      onnxruntime-gpu (never next to onnxruntime);
#   2. writes a synthetic tiled pyramidal 16384² RGB slide (tiles of
#      CMU-1-Small-Region, or a texture when that slide is absent);
#   3. checks that `--device cuda` fails fast where CUDA is unusable
#      (CUDA_VISIBLE_DEVICES="": exit status 2, about CUDA, in under 10 s);
#      then runs `wsi-deepr refocus --device cuda` on the synthetic slide
#      (--scale native --background process) and on every shared slide;
#   4. times bare ONNX Runtime (session.run on batches of 512² windows of the
#      same slide, normalised as refocus does) and reports s/Mpx end to end,
#      s/Mpx of bare inference over the same windows, and their ratio.
# The numbers go to $OUT/gpu_check.json when OUT is set (else to the work
# folder), and a summary to stdout.
#
# Usage:
#   benchmarks/gpu_check.sh                               # GPU machine
#   benchmarks/gpu_check.sh --cpu --python .venv/bin/python --size 2048
#       # dry run of the same steps with --device cpu, in an existing env
# Options:
#   --cpu          every step with --device cpu (checks the script itself)
#   --python PY    use this interpreter's environment instead of a fresh venv
#   --size N       synthetic slide side in px [16384; 2048 with --cpu]
#   --slides DIR   shared slides [../shared/data/slides, else shared/data/slides]
#   --work DIR     scratch folder [a new temporary folder, removed at the end]
#   --budget S     wall-clock budget of the whole script in seconds [480]
# Environment:
#   PIP_ARGS       extra pip arguments, e.g. "--no-index --find-links .whl" on
#                  a machine that cannot reach PyPI (carry the wheels there)
#   ORT_GPU        the onnxruntime-gpu requirement [onnxruntime-gpu]; e.g.
#                  'onnxruntime-gpu[cuda,cudnn]' brings the CUDA 12 / cuDNN 9
#                  runtime as wheels where the machine lacks them (their lib
#                  folders are put on LD_LIBRARY_PATH)
#   BF_MODEL       model of brightfield slides [deepr-brightfield: the
#                  shipped default network]
#   FL_MODEL       model of fluorescence slides [the default one]
#   OUT            folder for gpu_check.json and the logs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda
PY=""
SIZE=""
SLIDES=""
WORK=""
BUDGET=480
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) DEVICE=cpu ;;
        --python) PY="$2"; shift ;;
        --size) SIZE="$2"; shift ;;
        --slides) SLIDES="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ -n "$SIZE" ]] || { [[ $DEVICE == cuda ]] && SIZE=16384 || SIZE=2048; }
if [[ -z "$SLIDES" ]]; then
    for candidate in "$ROOT/../shared/data/slides" "$ROOT/shared/data/slides"; do
        [[ -d "$candidate" ]] && { SLIDES="$(cd "$candidate" && pwd)"; break; }
    done
fi
CLEAN_WORK=0
if [[ -z "$WORK" ]]; then WORK="$(mktemp -d -t gpu_check.XXXXXX)"; CLEAN_WORK=1; fi
mkdir -p "$WORK/out"
LOGS="${OUT:-$WORK}"
mkdir -p "$LOGS"
START=$(date +%s)
trap 'if [[ $CLEAN_WORK == 1 ]]; then rm -rf "$WORK"; fi' EXIT

log() { printf '[gpu_check %4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# ----------------------------------------------------------------- 1. environment
T0=$(now)
if [[ -z "$PY" ]]; then
    VENV="$WORK/venv"
    log "fresh venv $VENV"
    python3 -m venv "$VENV"
    PY="$VENV/bin/python"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q ${PIP_ARGS:-} "$ROOT" >"$LOGS/pip.log" 2>&1 || { tail -20 "$LOGS/pip.log"; exit 1; }
    if [[ $DEVICE == cuda ]]; then
        "$PY" -m pip uninstall -q -y onnxruntime >>"$LOGS/pip.log" 2>&1 || true
        # shellcheck disable=SC2086
        "$PY" -m pip install -q ${PIP_ARGS:-} "${ORT_GPU:-onnxruntime-gpu}" >>"$LOGS/pip.log" 2>&1 \
            || { tail -20 "$LOGS/pip.log"; exit 1; }
    fi
fi
SETUP_S=$(since "$T0")
# CUDA/cuDNN libraries installed as nvidia-* wheels (ORT_GPU extras) are found
# by the dynamic loader only through LD_LIBRARY_PATH (or ort.preload_dlls()).
NVLIBS=$("$PY" -c "import glob, os, site; print(':'.join(sorted(glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '*', 'lib')))))")
if [[ -n "$NVLIBS" ]]; then export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
log "GPU: ${GPU_NAME:-none seen by nvidia-smi}"
log "environment ready in ${SETUP_S}s: $("$PY" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())')"
if [[ -x "$(dirname "$PY")/wsi-deepr" ]]; then
    WSI=("$(dirname "$PY")/wsi-deepr")
else  # an interpreter without the console script: call the click entry point
    WSI=("$PY" -c "import sys; from wsi_deepr.cli import main; sys.argv[0] = 'wsi-deepr'; main()")
fi

BF_MODEL="${BF_MODEL-deepr-brightfield}"
FL_MODEL="${FL_MODEL-}"
model_args() {  # model_args SLIDE: the --model option for the slide's modality
    local modality
    modality=$("$PY" -c "import sys; from wsi_deepr.readers import open_slide; print(open_slide(sys.argv[1]).modality.value)" "$1" 2>/dev/null || echo unknown)
    if [[ $modality == brightfield && -n "$BF_MODEL" ]]; then echo "--model $BF_MODEL";
    elif [[ $modality == fluorescence && -n "$FL_MODEL" ]]; then echo "--model $FL_MODEL"; fi
}

# ------------------------------------------------------------ 2. synthetic slide
SYNTH="$WORK/synthetic_${SIZE}.ome.tif"
T0=$(now)
"$PY" - "$SYNTH" "$SIZE" "$SLIDES/CMU-1-Small-Region.svs" <<'PYEOF'
"""Write a tiled pyramidal RGB OME-TIFF of size² from tiles of a real slide."""
import sys
from pathlib import Path

import numpy as np
import tifffile

out, size, source = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if source.is_file():
    texture = tifffile.imread(source)[:2048, :2048, :3]
else:  # no shared slide: a smooth random texture
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(0)
    texture = gaussian_filter(rng.random((1024, 1024, 3)), sigma=(3, 3, 0))
    texture = (255 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint8)
th, tw = texture.shape[:2]
tile = 512
sizes = [size]
while sizes[-1] > 1024:
    sizes.append((sizes[-1] + 1) // 2)


def tiles(n: int, step: int):
    for y in range(0, n, tile):
        yy = (np.arange(y, y + tile) * step) % th
        for x in range(0, n, tile):
            xx = (np.arange(x, x + tile) * step) % tw
            yield texture[np.ix_(yy, xx)]


with tifffile.TiffWriter(out, bigtiff=True) as tif:
    for i, n in enumerate(sizes):
        tif.write(
            tiles(n, 2**i), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile),
            photometric="rgb", compression="jpeg", compressionargs={"level": 90},
            subifds=len(sizes) - 1 if i == 0 else None, subfiletype=1 if i else 0,
            metadata={"axes": "YXS", "PhysicalSizeX": 0.499, "PhysicalSizeY": 0.499} if i == 0 else None,
        )
print(f"{out.name}: {size}x{size}, {len(sizes)} levels, {out.stat().st_size / 2**20:.0f} MiB")
PYEOF
log "synthetic slide in $(since "$T0")s"

# --------------------------------------------------------- 3. fail fast without CUDA
FAST_RC=""; FAST_S=""; FAST_MSG=""
if [[ -f "$SYNTH" ]]; then
    T0=$(now)
    set +e
    # shellcheck disable=SC2046
    FAST_MSG=$(CUDA_VISIBLE_DEVICES="" timeout 60 "${WSI[@]}" refocus "$SYNTH" $(model_args "$SYNTH") \
        -o "$WORK/out/nocuda.ome.tif" --device cuda --overwrite -q 2>&1)
    FAST_RC=$?
    set -e
    FAST_S=$(since "$T0")
    log "--device cuda without a usable GPU: exit $FAST_RC in ${FAST_S}s: ${FAST_MSG:0:200}"
fi

# ------------------------------------------------------------- 4. end-to-end runs
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
run_refocus() {  # run_refocus NAME SLIDE [extra refocus options...]
    local name="$1" slide="$2"; shift 2
    local out="$WORK/out/$name.ome.tif" limit rc t0 wall
    limit=$(( $(left) - 45 ))
    if (( limit < 15 )); then
        log "$name: skipped (budget spent)"
        echo "{\"name\": \"$name\", \"skipped\": \"budget\"}" >>"$RUNS"
        return
    fi
    t0=$(now)
    set +e
    # shellcheck disable=SC2046
    timeout "$limit" "${WSI[@]}" refocus "$slide" $(model_args "$slide") -o "$out" \
        --device "$DEVICE" --overwrite -q "$@" \
        >"$LOGS/refocus_$name.log" 2>&1
    rc=$?
    set -e
    wall=$(since "$t0")
    log "$name: exit $rc in ${wall}s"
    [[ $rc == 0 ]] || tail -5 "$LOGS/refocus_$name.log"
    echo "{\"name\": \"$name\", \"slide\": \"$slide\", \"rc\": $rc, \"wall_s\": $wall, \"sidecar\": \"$out.json\", \"limit_s\": $limit}" >>"$RUNS"
    rm -f "$out"
}
run_refocus "synthetic_${SIZE}" "$SYNTH" --scale native --background process
if [[ -n "$SLIDES" ]]; then
    for slide in "$SLIDES"/*; do
        case "$slide" in *.svs|*.tif|*.tiff|*.qptiff|*.ndpi|*.mrxs) ;; *) continue ;; esac
        run_refocus "$(basename "$slide")" "$slide"
    done
fi

# ---------------------------------------------- 5. bare ONNX Runtime, same windows
RAW="$WORK/raw.json"
T0=$(now)
set +e
timeout $(( $(left) > 40 ? $(left) - 10 : 30 )) "$PY" - "$SYNTH" "$DEVICE" "$RAW" "$BF_MODEL" <<'PYEOF'
"""Windows/s of bare session.run on normalised 512² windows of the slide."""
import json
import sys
import time

import numpy as np

from wsi_deepr.inference.kernel import read_padded
from wsi_deepr.inference.normalization import compute_stats, stats_sample
from wsi_deepr.inference.registry import resolve_model
from wsi_deepr.inference.session import create_session
from wsi_deepr.readers import open_slide
from wsi_deepr.tiling.geometry import TileGrid

path, device, out, model = sys.argv[1:5]
slide = open_slide(path)
info = resolve_model(model or None, modality=slide.modality)
halo = info.card.halo
grid = TileGrid(slide.shape[:2], tile=512, halo=halo, overlap=min(16, halo))
batch, count = (8, 256) if device == "cuda" else (2, 16)
pixels, _ = stats_sample(slide.level_shapes, slide.read_region)
stats = compute_stats(info.card.normalization, pixels, dtype=slide.dtype)
windows = list(grid.windows())[:count]
data = np.stack([stats.normalize(read_padded(slide.reader, 0, w.read, grid.shape)) for w in windows])
data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
batches = [data[i:i + batch] for i in range(0, len(data), batch) if len(data[i:i + batch]) == batch]
session = create_session(info.path, device=device)
for b in batches[:2]:  # warm-up (cuDNN autotuning)
    session.run(None, {info.input_name: b})
start = time.perf_counter()
for b in batches:
    session.run(None, {info.input_name: b})
seconds = time.perf_counter() - start
done = batch * len(batches)
record = {
    "model": info.name, "provider": session.get_providers()[0], "batch": batch,
    "window": int(data.shape[-1]), "windows": done, "seconds": seconds,
    "windows_per_s": done / seconds,
}
json.dump(record, open(out, "w"))
print(json.dumps(record))
PYEOF
RAW_RC=$?
set -e
log "bare ONNX Runtime: exit $RAW_RC in $(since "$T0")s"

# ------------------------------------------------------------------ 6. the report
"$PY" - "$RUNS" "$RAW" "$LOGS/gpu_check.json" "$DEVICE" "$SIZE" "$SETUP_S" \
    "${FAST_RC:-null}" "${FAST_S:-null}" "$(( $(date +%s) - START ))" "$FAST_MSG" "$GPU_NAME" <<'PYEOF'
import json
import sys
from pathlib import Path

runs_path, raw_path, out_path, device, size, setup_s, fast_rc, fast_s, total_s, fast_msg, gpu = sys.argv[1:]
raw = json.loads(Path(raw_path).read_text()) if Path(raw_path).is_file() else None
runs = []
for line in Path(runs_path).read_text().splitlines():
    run = json.loads(line)
    sidecar = Path(run.pop("sidecar", "") or "/nonexistent")
    if run.get("rc") == 0 and sidecar.is_file():
        record = json.loads(sidecar.read_text())
        h, w = record["output_shape"][:2]
        skipped = record["parameters"].get("skipped_windows", 0)
        run.update(
            output=f"{w}x{h}", mpx=h * w / 1e6, windows=record["windows"],
            windows_run=record["windows"] - skipped, provider=record["provider"],
            stages=record["timings"], s_per_mpx=run["wall_s"] / (h * w / 1e6),
        )
        if raw:
            # What bare session.run would take for this run's windows, per Mpx.
            raw_s = run["windows_run"] / raw["windows_per_s"]
            run["raw_s_per_mpx"] = raw_s / run["mpx"]
            run["ratio_to_raw"] = run["s_per_mpx"] / run["raw_s_per_mpx"] if raw_s else None
    runs.append(run)
fast = None if fast_rc == "null" else {
    "exit": int(fast_rc), "seconds": float(fast_s), "message": fast_msg.strip()[-500:],
    # exit 2 for the right reason: the message must be about CUDA
    "ok": int(fast_rc) == 2 and float(fast_s) < 10 and "cuda" in fast_msg.lower(),
}
report = {
    "device": device, "gpu": gpu or None, "synthetic_size": int(size), "setup_s": float(setup_s),
    "fail_fast_without_cuda": fast, "raw_ort": raw, "runs": runs, "total_s": int(total_s),
}
Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
print(f"{'run':34} {'rc':>3} {'Mpx':>7} {'wall s':>8} {'s/Mpx':>7} {'raw s/Mpx':>9} {'ratio':>6}")
for r in runs:
    def f(key, fmt):
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    print(f"{r['name'][:34]:34} {r.get('rc', '-')!s:>3} {f('mpx', '7.1f')} {f('wall_s', '8.1f')} "
          f"{f('s_per_mpx', '7.3f')} {f('raw_s_per_mpx', '9.4f')} {f('ratio_to_raw', '6.1f')}")
if raw:
    print(f"bare ORT ({raw['provider']}): {raw['windows_per_s']:.1f} windows/s of {raw['window']}², batch {raw['batch']}")
print(f"fail fast without CUDA: {fast}")
print(f"report: {out_path} (total {total_s} s)")
failed = [r["name"] for r in runs if r.get("rc") not in (0, None)]
if failed or (fast and not fast["ok"]):
    print(f"PROBLEMS: failed runs {failed}; fail-fast {fast}")
PYEOF
