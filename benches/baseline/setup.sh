#!/usr/bin/env bash
# The Python baseline's environment: a venv with OpenCV and ONNX Runtime from PyPI, pinned,
# under $SKYNET_DATA_DIR/bench-venv (default ~/.local/share/skynet/bench-venv). ONNX Runtime
# is the version scripts/setup.sh installs for skynet, so both sides run the same kernels.
#
#   benches/baseline/setup.sh          # once; `cargo bench --bench pipeline` then finds it
set -euo pipefail

data_dir="${SKYNET_DATA_DIR:-$HOME/.local/share/skynet}"
venv="$data_dir/bench-venv"
requirements=(
  "onnxruntime==1.32.0"
  "opencv-python-headless==4.14.0.94"
  "numpy==2.4.6"
)

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "${requirements[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "bench-venv: $venv present with ${requirements[*]}"
  exit 0
fi

echo "bench-venv: installing ${requirements[*]} into $venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${requirements[@]}"
"$venv/bin/python" -c 'import cv2, onnxruntime, numpy; print("bench-venv: OpenCV", cv2.__version__, "| ONNX Runtime", onnxruntime.__version__, "| NumPy", numpy.__version__)'
