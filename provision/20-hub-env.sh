#!/usr/bin/env bash
# The hub's own Python environment at /opt/hubkiln/hub (root-owned): JupyterHub,
# its spawner, culler and authenticators, installed from the hashed lock
# files/hub-requirements.txt. Rebuilt from scratch only when its inputs change.
#
# Inputs:
#   HUBKILN_UV  optional, path to a uv binary to use instead of fetching one
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

HUB_ENV="$HUBKILN_PREFIX/hub"
LOCK="$HUBKILN_FILES/hub-requirements.txt"
STAMP="$HUB_ENV/.hubkiln-inputs"
command -v python3 >/dev/null || die "python3 is missing: run 10-apt-packages.sh first"

digest="$(inputs_digest "$(python3 -c 'import sys; print(sys.version_info[:2])')" "$(cat "$LOCK")")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$digest" && -x "$HUB_ENV/bin/jupyterhub" ]]; then
    announce "the hub environment is up to date ($HUB_ENV)"
else
    make_scratch
    setup_python_installer
    announce "creating an empty hub environment at $HUB_ENV"
    rm -rf "$HUB_ENV"
    mkdir -p "$HUBKILN_PREFIX"
    make_venv "$HUB_ENV"
    announce "installing the hub environment from ${LOCK##*/}"
    py_install "$HUB_ENV/bin/python" --require-hashes -r "$LOCK"
    seal_env "$HUB_ENV"
    printf '%s\n' "$digest" >"$STAMP"
fi

announce "checking the hub environment"
"$HUB_ENV/bin/jupyterhub" --version
