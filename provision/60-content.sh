#!/usr/bin/env bash
# The course material, read-only for everyone: each sub-folder of
# HUBKILN_CONTENT_SRC becomes /opt/hubkiln/content/<name>, owned by root, folders
# 0755 and files 0644 (0755 when executable). Symlinks are copied as the files
# they point to. The hub hands the folders out at each student's first login
# (hubkiln-prepare-user: a private copy, or a link, as content.delivery says).
# The folder is rebuilt from scratch at every run, so it always matches the source.
#
# Inputs:
#   HUBKILN_CONTENT_SRC  optional, a folder inside the target holding one sub-folder
#                        per content folder (names: letters, digits, '.', '_', '-').
#                        Unset or empty: the image has no course material.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

CONTENT="$HUBKILN_PREFIX/content"
SRC="${HUBKILN_CONTENT_SRC:-}"

folders=()
if [[ -n "$SRC" ]]; then
    [[ -d "$SRC" ]] || die "HUBKILN_CONTENT_SRC=$SRC is not a folder"
    for path in "$SRC"/*; do
        [[ -e "$path" ]] || continue # empty source: the glob stays unexpanded
        name="${path##*/}"
        [[ -d "$path" ]] || die "HUBKILN_CONTENT_SRC: '$name' is not a folder (one sub-folder per content folder)"
        [[ "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] \
            || die "HUBKILN_CONTENT_SRC: '$name' is not a folder name made of letters, digits, '.', '_' and '-'"
        folders+=("$name")
    done
fi

announce "replacing $CONTENT"
rm -rf "$CONTENT.new"
mkdir -p "$CONTENT.new"
for name in "${folders[@]}"; do
    announce "copying course folder '$name'"
    cp -RL --preserve=timestamps -- "$SRC/$name" "$CONTENT.new/$name"
done
chown -R root:root "$CONTENT.new"
chmod -R u=rwX,go=rX "$CONTENT.new"
rm -rf "$CONTENT"
mv "$CONTENT.new" "$CONTENT"
check_root_owned "$CONTENT"

if ((${#folders[@]})); then
    announce "course material: ${folders[*]} ($(du -sh "$CONTENT" | cut -f1))"
else
    announce "no course material (HUBKILN_CONTENT_SRC is unset or empty)"
fi
