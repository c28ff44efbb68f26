#!/usr/bin/env bash
# Sourced by the other launch scripts: finds the Swift toolchain, installs the Debian packages pixellm
# needs when they are missing, and builds pixellm (release). Safe to run repeatedly.
set -euo pipefail
PIXELLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIXELLM_ROOT

# 1. Swift: CI and fresh shells have no profile, so look in the usual install places.
if ! command -v swift >/dev/null 2>&1; then
  for d in /opt/swift/usr/bin /usr/share/swift/usr/bin /usr/local/swift/usr/bin "$HOME/.swiftly/bin" "$HOME/.local/share/swiftly/bin"; do
    if [ -x "$d/swift" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v swift >/dev/null 2>&1 || { echo "pixellm: no Swift toolchain found (install Swift 6.x, or put it on PATH)" >&2; exit 1; }

# 2. Debian packages: MPI, OpenBLAS, HDF5, libjpeg, libpng, pkg-config.
PKGS="libopenmpi-dev openmpi-bin libopenblas-dev libhdf5-dev libjpeg-dev libpng-dev pkg-config"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "pixellm: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# 3. mpirun flags for this machine: root needs --allow-run-as-root; more ranks than cores need --oversubscribe.
MPIRUN_FLAGS="--oversubscribe"
[ "$(id -u)" -eq 0 ] && MPIRUN_FLAGS="$MPIRUN_FLAGS --allow-run-as-root"
export MPIRUN_FLAGS

# 4. Build (release: numerics and speed need it). One build for every script: the tests are built too, with the
#    same flags, so the main job and the test command never rebuild what the other built.
if [ "${PIXELLM_SKIP_BUILD:-0}" != "1" ]; then
  (cd "$PIXELLM_ROOT" && swift build -c release --build-tests -Xswiftc -enable-testing 2>&1 | grep -vE "^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Linking|Write|Build)" || true)
  [ -x "$PIXELLM_ROOT/.build/release/pixellm" ] || { echo "pixellm: build failed" >&2; exit 1; }
fi
PIXELLM="$PIXELLM_ROOT/.build/release/pixellm"
export PIXELLM
