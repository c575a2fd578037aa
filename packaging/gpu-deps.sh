#!/usr/bin/env bash
# Fetches into .gpu/ (in .gitignore) what tests/gpu/run.sh needs on a GPU machine that has CUDA,
# a compiler, CMake and a python3 with torch but no Debian dev packages and no network:
#   .gpu/debs/           HDF5, nlohmann-json, oniguruma, utf8proc, pkgconf (Debian 12 packages)
#   .gpu/debs-fallback/  libcurl4 and the libraries it needs (libhdf5 links libcurl.so.4); each one
#                        is used there only where the machine has no library of that name
#   .gpu/whl/            the project's pinned transformers (the parity tests' reference)
# Run on Debian 12 (apt) with the project's .venv; about 25 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/debs .gpu/debs-fallback .gpu/whl
(cd .gpu/debs && apt-get download -q libhdf5-dev libhdf5-103-1 libsz2 libaec0 nlohmann-json3-dev libonig-dev \
  libonig5 libutf8proc-dev libutf8proc2 pkgconf pkgconf-bin libpkgconf3)
(cd .gpu/debs-fallback && apt-get download -q libcurl4 libbrotli1 libcom-err2 libffi8 libgmp10 libgnutls30 \
  libgssapi-krb5-2 libhogweed6 libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 \
  libnettle8 libnghttp2-14 libp11-kit0 libpsl5 librtmp1 libsasl2-2 libsasl2-modules-db libssh2-1 libssl3 \
  libtasn1-6 libunistring2)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
  "$(grep -E '^transformers==' packaging/requirements.txt)"
du -sh .gpu
