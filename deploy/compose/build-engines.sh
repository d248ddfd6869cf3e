#!/bin/sh
# Build the model repository for THIS GPU into $MODELS_DIR and mark it complete.
#
# Run by the `export` image target: the compose service `engines` and the Kubernetes Job
# `talking-head-engines` (deploy/k8s/base/engines-job.yaml). Steps:
#   1. skip everything when $MODELS_DIR/.engines-complete already holds this build's fingerprint
#      (preset + GPU model + TensorRT version + digest of the exporter code and model configs);
#   2. copy the repository skeleton (config.pbtxt, configs/, the Python models' model.py) into $MODELS_DIR;
#   3. run the ONNX export and then the TensorRT build, both writing into $MODELS_DIR
#      (model_repository/ is pointed at it, so their own "already up to date" checks see earlier builds);
#   4. write the marker last. Consumers (compose's depends_on, the k8s init container) wait for it.
#
# Environment (every variable is optional):
#   MODELS_DIR     where the served model repository goes (default /models)
#   PRESET         export preset (default base)
#   FORCE_REBUILD  1 = rebuild even when the marker matches
set -eu

MODELS_DIR="${MODELS_DIR:-/models}"
PRESET="${PRESET:-base}"
FORCE_REBUILD="${FORCE_REBUILD:-0}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
MARKER="$MODELS_DIR/.engines-complete"

cd "$REPO"
mkdir -p "$MODELS_DIR"

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
if [ -z "$gpu" ]; then
    echo "build-engines: no GPU visible; TensorRT plans must be built on the GPU model that serves them" >&2
    exit 1
fi
trt="$(python -c 'import tensorrt; print(tensorrt.__version__)')"
# -H: model_repository is a symlink to $MODELS_DIR after the first run in this container.
code="$(find -H export model_repository deploy/backends -type f \( -name '*.py' -o -name '*.pbtxt' \) \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
fingerprint="preset=$PRESET gpu=$gpu tensorrt=$trt code=$code"

if [ "$FORCE_REBUILD" != "1" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$fingerprint" ]; then
    echo "build-engines: $MODELS_DIR is up to date ($fingerprint)"
    exit 0
fi

rm -f "$MARKER"
echo "build-engines: building into $MODELS_DIR ($fingerprint)"

# The repository skeleton (configs and Python models) from this image; files generated earlier are kept
# so that the exporters can skip up-to-date stages. (A restarted container already has the symlink.)
if [ "$(readlink -f model_repository)" != "$(readlink -f "$MODELS_DIR")" ]; then
    cp -R model_repository/. "$MODELS_DIR"/
    rm -rf model_repository
    ln -s "$MODELS_DIR" model_repository
fi

python -m export --preset "$PRESET"
python -m export.trt --preset "$PRESET"

# Every TensorRT model must have its plan before the repository is declared complete.
missing=0
for cfg in "$MODELS_DIR"/*/config.pbtxt; do
    model_dir="$(dirname "$cfg")"
    if grep -q 'platform: "tensorrt_plan"' "$cfg" && [ ! -s "$model_dir/1/model.plan" ]; then
        echo "build-engines: $model_dir/1/model.plan is missing" >&2
        missing=1
    fi
done
[ "$missing" = 0 ] || exit 1

printf '%s' "$fingerprint" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "build-engines: done"
