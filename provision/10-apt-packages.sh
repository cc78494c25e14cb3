#!/usr/bin/env bash
# Install the base runtime of the hub from the OS archive, plus the profile's
# apt packages. Optional build-only apt proxy (removed again by 90-seal.sh).
#
# Inputs:
#   HUBKILN_APT_PACKAGES  optional, package names separated by spaces (may be empty)
#   HUBKILN_APT_PROXY     optional, http://host:port of an apt cache, build only
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

# python3-venv: the envs are venvs; git: nbgitpuller; ca-certificates: HTTPS.
# Node.js is not needed here: 30-proxy.sh brings the runtime of the proxy.
# caddy: the HTTPS front (70-https.sh; Ubuntu universe, Debian main); openssl:
# the first-boot secrets and self-signed certificate (hubkiln-firstboot).
# The hardening tools (80-hardening.sh configures them; all stay in the image):
# nftables (the firewall), auditd (audit rules), fail2ban with python3-systemd
# (bans from the journal), apparmor, unattended-upgrades (security updates),
# libpam-pwquality (password quality for local passwords), lynis (the audit that
# validation runs; kept as an admin tool, see provision/README.md).
# The per-student disk quotas (hub.limits.disk): quota (setquota at each spawn,
# quotacheck and quotaon at boot, repquota for admins) and kmod (modprobe, depmod,
# modinfo: 15-kernel-quota.sh and hubkiln-quota.service).
HARDENING_PACKAGES=(nftables auditd fail2ban python3-systemd apparmor unattended-upgrades
    libpam-pwquality lynis)
QUOTA_PACKAGES=(quota kmod)
BASE_PACKAGES=(python3 python3-venv git ca-certificates caddy openssl "${HARDENING_PACKAGES[@]}"
    "${QUOTA_PACKAGES[@]}")

split_words PROFILE_PACKAGES "${HUBKILN_APT_PACKAGES:-}"
for pkg in "${PROFILE_PACKAGES[@]}"; do
    [[ "$pkg" =~ ^[a-z0-9][a-z0-9+.:=~-]*$ ]] \
        || die "HUBKILN_APT_PACKAGES: '$pkg' is not a package name (name, name=version or name:arch)"
done

if [[ -n "${HUBKILN_APT_PROXY:-}" ]]; then
    [[ "$HUBKILN_APT_PROXY" =~ ^https?://[^[:space:]\"\;]+$ ]] \
        || die "HUBKILN_APT_PROXY must look like http://host:port, got '$HUBKILN_APT_PROXY'"
    announce "writing the build-only apt proxy drop-in $HUBKILN_APT_PROXY_DROPIN"
    printf '%s\n' \
        "// hubkiln BUILD-ONLY apt proxy: removed by provision/90-seal.sh before capture." \
        "Acquire::http::Proxy \"$HUBKILN_APT_PROXY\";" >"$HUBKILN_APT_PROXY_DROPIN"
elif [[ -e "$HUBKILN_APT_PROXY_DROPIN" ]]; then
    announce "removing the apt proxy drop-in (HUBKILN_APT_PROXY is unset)"
    rm -f "$HUBKILN_APT_PROXY_DROPIN"
fi

announce "updating the apt package lists"
apt-get "${HUBKILN_APT_OPTS[@]}" update

announce "installing the base runtime: ${BASE_PACKAGES[*]}"
apt-get "${HUBKILN_APT_OPTS[@]}" install --no-install-recommends "${BASE_PACKAGES[@]}"

if ((${#PROFILE_PACKAGES[@]})); then
    announce "installing the profile's apt packages: ${PROFILE_PACKAGES[*]}"
    apt-get "${HUBKILN_APT_OPTS[@]}" install --no-install-recommends "${PROFILE_PACKAGES[@]}"
fi

announce "cleaning the apt cache"
apt-get clean
