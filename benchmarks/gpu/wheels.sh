#!/usr/bin/env bash
# Download, on this machine, the wheels gigasid needs beyond what a lent GPU machine's image
# holds (its Python is 3.12 with torch, numba, numpy, rich, typer, pyyaml, tifffile, psutil;
# no FAISS, Zarr, Dask or libvips), into .whl/ at the repository root (git-ignored locally
# via .git/info/exclude). pyvips 3 is pure Python but published as a source archive: it is
# built into a wheel here. About 40 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
for p in faiss-cpu==1.15.1 zarr==3.1.6 numcodecs==0.16.6 dask==2026.8.0 distributed==2026.8.0 \
         donfig crc32c partd locket tblib zict tornado cffi pycparser sortedcontainers \
         typing_extensions pyvips-binary==8.18.7; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl "$p"
done
python3 -m pip wheel -q --no-deps pyvips==3.2.0 -w .whl
du -sh .whl
