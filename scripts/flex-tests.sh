#!/usr/bin/env bash
# The patched CPU backend's own unit tests (vendor/burn-flex is not a workspace member):
# runs them on a copy, so that cargo's lock file stays out of the vendored crate, with the
# workspace's locked versions and a target directory of their own under target/ that later
# runs reuse.
#
#   scripts/flex-tests.sh [cargo test arguments...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$root/vendor/burn-flex" "$work/burn-flex"
# The workspace's lock file pins the versions the binary builds with; cargo adds the crate's
# test-only dependencies to it and drops the rest.
cp "$root/Cargo.lock" "$work/burn-flex/Cargo.lock"
cd "$work/burn-flex"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/burn-flex-tests" \
    cargo test --release --features x86-v4 "$@"
