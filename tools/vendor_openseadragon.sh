#!/usr/bin/env bash
# Vendor OpenSeadragon into gigasid/io/static/openseadragon/ from the npm registry tarball.
#
# The generated deep-zoom viewer (index.html) must work offline, by double-click, so the
# viewer's JavaScript and button icons ship inside the package instead of coming from a CDN.
#
# Usage: tools/vendor_openseadragon.sh [VERSION]     (default 6.1.1; needs npm and tar)
set -euo pipefail

VERSION="${1:-6.1.1}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${REPO_ROOT}/gigasid/io/static/openseadragon"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

(cd "${WORK}" && npm pack --silent "openseadragon@${VERSION}" >/dev/null)
tar -xzf "${WORK}/openseadragon-${VERSION}.tgz" -C "${WORK}"
SRC="${WORK}/package"

rm -rf "${DEST}"
mkdir -p "${DEST}"
cp "${SRC}/build/openseadragon/openseadragon.min.js" "${DEST}/"
cp -r "${SRC}/build/openseadragon/images" "${DEST}/images"
cp "${SRC}/LICENSE.txt" "${DEST}/LICENSE.txt"
printf '%s\n' "${VERSION}" > "${DEST}/VERSION"

echo "vendored OpenSeadragon ${VERSION} into ${DEST}"
