#!/bin/sh
# Init container of deployment.yaml: wait for the engines Job's completion marker in $SRC (the read-only
# PVC), then copy the served model repository to $DEST (the pod's local emptyDir), leaving out the ONNX
# graphs, which the TensorRT (GPU) configs do not load.
#
# Environment: SRC (default /engines), DEST (default /models), ENGINES_WAIT_SECONDS (default 3600),
# POLL_SECONDS (default 10).
set -eu

SRC="${SRC:-/engines}"
DEST="${DEST:-/models}"
WAIT="${ENGINES_WAIT_SECONDS:-3600}"
POLL="${POLL_SECONDS:-10}"
MARKER="$SRC/.engines-complete"

deadline=$(( $(date +%s) + WAIT ))
until [ -f "$MARKER" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "stage-engines: no $MARKER after ${WAIT}s: run the talking-head-engines Job (deploy/k8s/base/engines-job.yaml)" >&2
        exit 1
    fi
    echo "stage-engines: waiting for the talking-head-engines Job ($MARKER)"
    sleep "$POLL"
done
echo "stage-engines: engines $(cat "$MARKER")"
mkdir -p "$DEST"
tar -C "$SRC" --exclude=model.onnx -cf - . | tar -C "$DEST" -xf -
echo "stage-engines: copied to $DEST"
