#!/usr/bin/env bash
# Each vendored crate (vendor/NAME) as a diff against the same crate as published on crates.io.
#
#   scripts/vendor-patch.sh           writes vendor/NAME.patch for every vendored crate
#   scripts/vendor-patch.sh --check   fails if a vendor/NAME.patch is not what its vendored
#                                     crate and the published one give (CI runs this)
#
# The published crates come from crates.io through `cargo vendor` in a throwaway project, so
# no other download is needed. Apply a patch to a pristine copy with, for example,
# `patch -p1 -d burn-flex-0.22.1 < vendor/burn-flex.patch`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# name version: what vendor/ holds (each has its PATCHES.md).
crates=("burn-flex 0.22.1" "zune-jpeg 0.5.15")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/project/src"
{
    printf '[package]\nname = "pristine-vendored"\nversion = "0.0.0"\nedition = "2021"\n\n'
    printf '[dependencies]\n'
    for crate in "${crates[@]}"; do
        read -r name version <<< "$crate"
        printf '%s = { version = "=%s", default-features = false }\n' "$name" "$version"
    done
} > "$work/project/Cargo.toml"
: > "$work/project/src/lib.rs"
(cd "$work/project" && cargo vendor --versioned-dirs --quiet vendor > /dev/null)

status=0
for crate in "${crates[@]}"; do
    read -r name version <<< "$crate"
    patch_file="$root/vendor/$name.patch"
    rm -rf "$work/a" "$work/b"
    # a/: the published crate without the package's metadata files; b/: ours.
    cp -r "$work/project/vendor/$name-$version" "$work/a"
    rm -f "$work/a/.cargo-checksum.json" "$work/a/.cargo_vcs_info.json" "$work/a/Cargo.lock" \
        "$work/a/Cargo.toml.orig"
    cp -r "$root/vendor/$name" "$work/b"
    rm -f "$work/b/.cargo-ok"
    # Without the files' times, so that the patch depends on their content only.
    (cd "$work" && diff -ruN a b > "$work/raw.patch") || [ $? -eq 1 ]
    sed -E 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' "$work/raw.patch" > "$work/$name.patch"

    if [ "${1:-}" = "--check" ]; then
        if cmp -s "$work/$name.patch" "$patch_file"; then
            echo "vendor/$name.patch is vendor/$name against $name $version"
        else
            echo "vendor/$name.patch does not match vendor/$name against $name $version:" >&2
            diff -u "$patch_file" "$work/$name.patch" | head -40 >&2 || true
            echo "run scripts/vendor-patch.sh to regenerate it" >&2
            status=1
        fi
    else
        cp "$work/$name.patch" "$patch_file"
        echo "wrote $patch_file ($(grep -c '^diff ' "$patch_file") files, $(wc -l < "$patch_file") lines)"
    fi
done
exit "$status"
