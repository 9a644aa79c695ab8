#!/usr/bin/env bash
# Build .gpu-kit/: what bench/gpu/run.sh needs on a GPU machine that reaches no network.
#
# The lent GPU machines have Python 3.12 with torch, numpy, scipy, typer, rich, einops, psutil, matplotlib
# and pytest, but none of MONAI, nibabel, pydicom, highdicom, isal or pydantic. This fetches those as
# wheels (the versions this checkout's .venv runs its tests with) and copies the real sample CT, so one
# device call can run the GPU checks of issue #3 §5. Nothing here is committed: .gpu-kit/ is git-ignored
# locally, and the sample is medical data.
#
#   bench/gpu/make_kit.sh                 # for the GPU machine (CPython 3.12, manylinux x86_64)
#   PYVER=3.11 MAX_GLIBC=36 KIT=.gpu-kit-311 bench/gpu/make_kit.sh    # to rehearse run.sh here (Debian 12)
#
# Then, on the device tool: run(command="bash bench/gpu/run.sh", carry=[".gpu-kit"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=${KIT:-.gpu-kit}
PYVER=${PYVER:-3.12}
VENV_PY=${VENV_PY:-.venv/bin/python}

grep -qxF "/$KIT/" .git/info/exclude 2>/dev/null || echo "/$KIT/" >> .git/info/exclude
rm -rf "$KIT/whl" && mkdir -p "$KIT/whl"

packages=(monai nibabel isal pydicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg pylibjpeg-rle pynrrd
          pydantic pydantic-core annotated-types typing-inspection typing-extensions highdicom pyjpegls)
if [ "$PYVER" = "3.11" ]; then packages+=(importlib-resources); fi  # nibabel needs it below Python 3.12
pins=()
for name in "${packages[@]}"; do
    pins+=("$name==$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
# pip matches manylinux tags exactly: name every glibc up to the machine's (2.39 on the GPU machines'
# Ubuntu 24.04; MAX_GLIBC=36 for this Debian 12)
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 "${MAX_GLIBC:-39}"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$KIT/whl" "${pins[@]}"

sample=$("$VENV_PY" -c "from models.data.sample import fetch_sample_data; print(fetch_sample_data())")
rm -rf "$KIT/cache" && mkdir -p "$KIT/cache" && cp -a "$sample" "$KIT/cache/sample"
du -sh "$KIT"
