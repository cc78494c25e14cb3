#!/usr/bin/env bash
# The students' Python environment at /opt/hubkiln/user, separate from the hub's:
# JupyterLab, Notebook, jupyterhub-singleuser, ipykernel, nbgitpuller and
# ipywidgets (files/user-requirements.txt) plus the profile's packages, and one
# kernel registered inside the env. Root-owned and read-only for students.
# Rebuilt from scratch only when its inputs change.
#
# Inputs:
#   HUBKILN_PYTHON_PACKAGES      optional, requirement specifiers separated by
#                                spaces or newlines (e.g. "networkx pulp==2.9.0")
#   HUBKILN_KERNEL_NAME          optional, kernelspec name (default python3)
#   HUBKILN_KERNEL_DISPLAY_NAME  required, name shown in the launcher (the profile's
#                                environment.kernel_display_name; its default is the
#                                hub's, in files/hub/settings.schema.yaml)
#   HUBKILN_UV                   optional, path to a uv binary to use
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

USER_ENV="$HUBKILN_PREFIX/user"
BASE="$HUBKILN_FILES/user-requirements.txt"
STAMP="$USER_ENV/.hubkiln-inputs"
KERNEL_NAME="${HUBKILN_KERNEL_NAME:-python3}"
# Kernels run at this nice, in their own autogroup (their own session) too: a class
# whose first cells import the course's packages leaves the CPU to the servers that
# are still starting, to the hub and to each student's own server (issue 14).
KERNEL_NICE=10
KERNEL_DISPLAY_NAME="${HUBKILN_KERNEL_DISPLAY_NAME:-}"
[[ -n "$KERNEL_DISPLAY_NAME" ]] || die "HUBKILN_KERNEL_DISPLAY_NAME is empty: give the kernel's name in the launcher"
command -v python3 >/dev/null || die "python3 is missing: run 10-apt-packages.sh first"

[[ "$KERNEL_NAME" =~ ^[A-Za-z0-9._-]+$ ]] \
    || die "HUBKILN_KERNEL_NAME='$KERNEL_NAME': use only letters, digits, '.', '_' and '-'"
split_words PROFILE_PACKAGES "${HUBKILN_PYTHON_PACKAGES:-}"
for spec in "${PROFILE_PACKAGES[@]}"; do
    [[ "$spec" != -* ]] \
        || die "HUBKILN_PYTHON_PACKAGES: '$spec' is an option; only requirement specifiers are allowed"
done

make_scratch
# Keep Jupyter and IPython from leaving per-user state in root's home.
export JUPYTER_CONFIG_DIR="$SCRATCH/jupyter-config" JUPYTER_DATA_DIR="$SCRATCH/jupyter-data" \
    JUPYTER_RUNTIME_DIR="$SCRATCH/jupyter-runtime" IPYTHONDIR="$SCRATCH/ipython"

digest="$(inputs_digest "$(python3 -c 'import sys; print(sys.version_info[:2])')" \
    "$(cat "$BASE")" "${PROFILE_PACKAGES[@]}" "$KERNEL_NAME" "$KERNEL_DISPLAY_NAME" \
    "$(cat "$HUBKILN_FILES/user/hubkiln-kernel")" "$KERNEL_NICE")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$digest" && -x "$USER_ENV/bin/jupyter-lab" ]]; then
    announce "the user environment is up to date ($USER_ENV)"
else
    setup_python_installer
    announce "creating an empty user environment at $USER_ENV"
    rm -rf "$USER_ENV"
    mkdir -p "$HUBKILN_PREFIX"
    make_venv "$USER_ENV"
    printf '%s\n' "${PROFILE_PACKAGES[@]}" >"$SCRATCH/profile-requirements.txt"
    announce "installing the user environment: ${BASE##*/} + ${PROFILE_PACKAGES[*]:-no profile packages}"
    py_install "$USER_ENV/bin/python" -r "$BASE" -r "$SCRATCH/profile-requirements.txt"

    announce "registering the kernel '$KERNEL_NAME' ('$KERNEL_DISPLAY_NAME') inside $USER_ENV, started by hubkiln-kernel (nice $KERNEL_NICE)"
    "$USER_ENV/bin/python" -m ipykernel install --sys-prefix \
        --name "$KERNEL_NAME" --display-name "$KERNEL_DISPLAY_NAME"
    install -m 0755 -o root -g root "$HUBKILN_FILES/user/hubkiln-kernel" "$USER_ENV/bin/hubkiln-kernel"
    sed -i -e "s/@KERNEL_NICE@/$KERNEL_NICE/g" -e "s|@PYTHON@|$USER_ENV/bin/python|" \
        "$USER_ENV/bin/hubkiln-kernel"
    spec="$USER_ENV/share/jupyter/kernels/$KERNEL_NAME/kernel.json"
    "$USER_ENV/bin/python" - "$spec" "$USER_ENV/bin/hubkiln-kernel" <<'PY'
import json, sys
spec, launcher = sys.argv[1:]
data = json.load(open(spec))
assert data["argv"][0].endswith("/python"), data["argv"]
data["argv"][0] = launcher  # it execs the same python with the same arguments
json.dump(data, open(spec, "w"), indent=1)
PY
    if [[ "$KERNEL_NAME" != python3 ]]; then
        announce "making '$KERNEL_NAME' the only and default kernel (hiding ipykernel's python3)"
        rm -rf "$USER_ENV/share/jupyter/kernels/python3"
        # Read by every Jupyter app of this env (server, kernelspec). The name
        # was checked above to hold no character that needs escaping in JSON.
        cat >"$USER_ENV/etc/jupyter/jupyter_config.json" <<JSON
{
  "KernelSpecManager": {"ensure_native_kernel": false},
  "MultiKernelManager": {"default_kernel_name": "$KERNEL_NAME"}
}
JSON
    fi
    announce "removing the packages' own test suites (never imported at run time; ~130 MB)"
    find "$USER_ENV"/lib/python3*/site-packages -mindepth 2 -type d -name tests -prune \
        -exec rm -rf {} +
    seal_env "$USER_ENV"
    printf '%s\n' "$digest" >"$STAMP"
fi

# JupyterLab asks each student whether to fetch Jupyter's news and checks for new
# versions, over the internet: an offline hub answers neither, and the course's
# image is the version that matters. Outside the cached part: a plain file.
announce "JupyterLab settings for the class: no news feed, no update check (lab/settings/overrides.json)"
install -D -m 0644 -o root -g root "$HUBKILN_FILES/user/lab-overrides.json" \
    "$USER_ENV/share/jupyter/lab/settings/overrides.json"

announce "checking the user environment"
"$USER_ENV/bin/jupyter" lab --version
"$USER_ENV/bin/jupyterhub-singleuser" --version
"$USER_ENV/bin/jupyter" kernelspec list
"$USER_ENV/bin/hubkiln-kernel" -c 'import ipykernel_launcher, os; print("kernel launcher: nice", os.nice(0))'
