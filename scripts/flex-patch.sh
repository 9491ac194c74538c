#!/usr/bin/env bash
# vendor/burn-flex as a diff against burn-flex as published on crates.io.
#
#   scripts/flex-patch.sh           writes vendor/burn-flex.patch
#   scripts/flex-patch.sh --check   fails if vendor/burn-flex.patch is not what the vendored
#                                   crate and the published one give (CI runs this)
#
# The published crate comes from crates.io through `cargo vendor` in a throwaway project,
# so no other download is needed. Apply the patch to a pristine copy with
# `patch -p1 -d burn-flex-0.22.1 < vendor/burn-flex.patch`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="0.22.1"
patch_file="$root/vendor/burn-flex.patch"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/project/src"
cat > "$work/project/Cargo.toml" <<TOML
[package]
name = "pristine-burn-flex"
version = "0.0.0"
edition = "2021"

[dependencies]
burn-flex = { version = "=$version", default-features = false }
TOML
: > "$work/project/src/lib.rs"
(cd "$work/project" && cargo vendor --versioned-dirs --quiet vendor > /dev/null)

# a/: the published crate without the package's metadata files; b/: ours.
cp -r "$work/project/vendor/burn-flex-$version" "$work/a"
rm -f "$work/a/.cargo-checksum.json" "$work/a/.cargo_vcs_info.json" "$work/a/Cargo.lock" \
    "$work/a/Cargo.toml.orig"
cp -r "$root/vendor/burn-flex" "$work/b"
rm -f "$work/b/.cargo-ok"
# Without the files' times, so that the patch depends on their content only.
(cd "$work" && diff -ruN a b > "$work/raw.patch") || [ $? -eq 1 ]
sed -E 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' "$work/raw.patch" > "$work/burn-flex.patch"

if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$work/burn-flex.patch" "$patch_file"; then
        echo "vendor/burn-flex.patch does not match vendor/burn-flex against burn-flex $version:" >&2
        diff -u "$patch_file" "$work/burn-flex.patch" | head -40 >&2 || true
        echo "run scripts/flex-patch.sh to regenerate it" >&2
        exit 1
    fi
    echo "vendor/burn-flex.patch is vendor/burn-flex against burn-flex $version"
else
    cp "$work/burn-flex.patch" "$patch_file"
    echo "wrote $patch_file ($(grep -c '^diff ' "$patch_file") files, $(wc -l < "$patch_file") lines)"
fi
