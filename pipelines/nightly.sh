#!/usr/bin/env bash
# Nightly refocus of a folder on one machine (a GPU workstation or a compute node),
# run by cron (see crontab.example).  wsi-deepr batch starts a Dask LocalCluster
# sized to the machine and prints its dashboard link to the log.
#
#   - finished slides are skipped, so each night only new slides are refocused;
#   - a slide interrupted by a crash or a reboot resumes where it stopped;
#   - flock keeps a second night from starting while the first still runs
#     (and the per-output locks keep any other job off the same outputs);
#   - exit status 1 (some slide failed) makes cron mail the log's tail.
set -euo pipefail

INCOMING=${WSI_DEEPR_INCOMING:-/data/slides/incoming}
OUTPUT=${WSI_DEEPR_OUTPUT:-/data/slides/refocused}
VENV=${WSI_DEEPR_VENV:-$HOME/venvs/wsi-deepr}
DEVICE=${WSI_DEEPR_DEVICE:-auto}          # cuda on a GPU machine
LOGS=${WSI_DEEPR_LOGS:-$OUTPUT/logs}
EXTRA=(${WSI_DEEPR_ARGS:-})               # e.g. --model deepr-brightfield.onnx --workers 4

mkdir -p "$OUTPUT" "$LOGS"
# shellcheck source=/dev/null
source "$VENV/bin/activate"
stamp=$(date +%Y%m%d-%H%M%S)
exec 9>"$OUTPUT/.nightly.flock"
if ! flock -n 9; then
    echo "wsi-deepr nightly: the previous run still holds $OUTPUT/.nightly.flock; not starting" >&2
    exit 0
fi
status=0
wsi-deepr batch "$INCOMING" --output-dir "$OUTPUT" --device "$DEVICE" \
    --report "$LOGS/report-$stamp" "${EXTRA[@]}" >"$LOGS/nightly-$stamp.log" 2>&1 || status=$?
tail -n 20 "$LOGS/nightly-$stamp.log" >&2
exit "$status"
