#!/usr/bin/env bash
# Image hygiene before capture (HARDENING.md, "Image hygiene"): remove whatever
# would be shared by every instance of the image or leaks the build, then check.
# Runs last, in a chroot or in the booted build VM. fstrim only when booted.
#
# The build user is deleted here when none of its processes runs (always in a
# chroot). When it still has processes (this script runs in its SSH session),
# only its keys and sudo rules go, and the CALLER must run
# `userdel --force --remove USER` as its very last command.
#
# Inputs:
#   HUBKILN_BUILD_USER  optional, the account the build logged in with
#   PIP_CERT, SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS  optional:
#       the build CA copies they name are deleted, except under /run (tmpfs)
#       and the system bundle
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

BUILD_USER="${HUBKILN_BUILD_USER:-}"
[[ "$BUILD_USER" != root ]] || die "HUBKILN_BUILD_USER must not be root"
# Roots that may be separate file systems on a VM; find -xdev stays in each.
SEARCH_ROOTS=()
for dir in / /home /srv /var /opt /root /tmp /var/tmp; do
    [[ -d "$dir" ]] && SEARCH_ROOTS+=("$dir")
done
HISTORY_FILES=(.bash_history .python_history .lesshst .viminfo .node_repl_history
    .sqlite_history .wget-hsts .psql_history .ipython/profile_default/history.sqlite)

home_dirs() {
    local home
    getent passwd | cut -d: -f6 | sort -u | while read -r home; do
        if [[ "$home" != / && -d "$home" ]]; then printf '%s\n' "$home"; fi
    done
}

user_has_processes() {
    local uid
    uid="$(id -u "$1")"
    grep -qs "^Uid:[[:space:]]*${uid}[[:space:]]" /proc/[0-9]*/status
}

announce "removing SSH host keys (regenerated at first boot)"
rm -f /etc/ssh/ssh_host_*

announce "emptying /etc/machine-id and removing /var/lib/dbus/machine-id"
truncate -s 0 /etc/machine-id
chmod 0444 /etc/machine-id
rm -f /var/lib/dbus/machine-id

if command -v cloud-init >/dev/null; then
    announce "cleaning cloud-init state, logs and seed"
    cloud-init clean --logs --seed
fi

if [[ -n "$BUILD_USER" ]] && getent passwd "$BUILD_USER" >/dev/null; then
    if [[ -d /etc/sudoers.d ]]; then
        announce "removing sudo rules that name the build user $BUILD_USER"
        find /etc/sudoers.d -type f -exec grep -qwF -- "$BUILD_USER" {} \; -print -delete
    fi
    if ! in_chroot && user_has_processes "$BUILD_USER"; then
        announce "the build user $BUILD_USER is still logged in: the caller must run" \
            "'userdel --force --remove $BUILD_USER' as its last command"
    else
        announce "deleting the build user $BUILD_USER and its home"
        userdel --remove "$BUILD_USER"
    fi
fi

announce "removing every authorized_keys file"
find "${SEARCH_ROOTS[@]}" -xdev -type f \( -name authorized_keys -o -name authorized_keys2 \) \
    -print -delete

announce "SSH: keys only from the root-owned /etc/ssh/hubkiln-keys from now on (the build logged in with a key in its home)"
install -d -m 0755 -o root -g root /etc/ssh/hubkiln-keys /etc/ssh/sshd_config.d
install -m 0644 -o root -g root "$HUBKILN_FILES/ssh/30-hubkiln-keys.conf" \
    /etc/ssh/sshd_config.d/30-hubkiln-keys.conf

announce "locking the root password"
if [[ "$(passwd -S root | cut -d' ' -f2)" != L ]]; then
    passwd -l root
fi

announce "removing build-only files (apt proxy drop-in, build CA copies)"
rm -f "$HUBKILN_APT_PROXY_DROPIN"
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" "${NODE_EXTRA_CA_CERTS:-}"; do
    case "$ca" in
        "" | /run/* | /etc/ssl/certs/ca-certificates.crt) ;;
        *) rm -fv -- "$ca" ;;
    esac
done
[[ ! -e /var/lib/hubkiln/build-only-npm-packages ]] \
    || die "the build-only npm is still installed: run 30-proxy.sh again to purge it"

announce "stopping the hub's services started at the build boot (nothing may write after the clean)"
if ! in_chroot; then
    for unit in hubkiln-front-check.timer hubkiln-front.service jupyterhub.service \
        jupyterhub-proxy.service; do
        if systemctl is-active --quiet "$unit"; then systemctl stop "$unit"; fi
    done
fi
announce "removing the hub's per-instance state (secrets, TLS keys, launch settings, front config)"
for dir in /var/lib/hubkiln/secrets /var/lib/hubkiln/hub /etc/hubkiln/tls /home/.hubkiln/hub; do
    if [[ -d "$dir" ]]; then find "$dir" -mindepth 1 -delete; fi
done
rm -rf /var/lib/hubkiln/content-delivered /var/lib/caddy/.local /var/lib/caddy/.config \
    /home/.hubkiln/caddy
rm -f /var/lib/hubkiln/launch-admins.json /etc/hubkiln/launch.yaml /etc/hubkiln/front/plan.json \
    /etc/hubkiln/hub.d/50-launch.yaml /etc/hubkiln/front/Caddyfile
announce "removing fail2ban's database (bans and failures seen during the build)"
if ! in_chroot && systemctl is-active --quiet fail2ban.service; then
    systemctl stop fail2ban.service
fi
rm -f /var/lib/fail2ban/fail2ban.sqlite3
announce "removing hub databases, cookie secrets and proxy pid files"
find "${SEARCH_ROOTS[@]}" -xdev -type f \( -name 'jupyterhub.sqlite*' \
    -o -name jupyterhub_cookie_secret -o -name jupyterhub-proxy.pid \) -print -delete
announce "removing private keys (TLS and others) from /etc, /srv, /var/lib and homes"
rm -f /etc/ssl/certs/ssl-cert-snakeoil.pem
# grep exits 1 when it finds no key, the normal case: the process substitution
# lets the loop run on whatever it found without failing the script.
while IFS= read -r -d '' key; do
    rm -fv -- "$key"
done < <(grep -rlsZ -D skip -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' /etc /srv /var/lib /root /home)

announce "removing shell and Python histories and user caches (pip, uv, npm)"
mapfile -t HOMES < <(home_dirs)
for home in /root "${HOMES[@]}"; do
    for file in "${HISTORY_FILES[@]}"; do rm -f -- "${home:?}/$file"; done
    rm -rf -- "${home:?}/.cache" "${home:?}/.npm" "${home:?}/.local/share/uv"
done

announce "emptying the apt lists and caches"
apt-get clean
find /var/lib/apt/lists -type f ! -name lock -delete

announce "emptying /tmp and /var/tmp"
# systemd-private-* belong to running services on a booted system; systemd
# removes them when those services stop at shutdown.
find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*' -exec rm -rf -- {} +

announce "truncating logs"
if ! in_chroot && systemctl is-active --quiet systemd-journald 2>/dev/null; then
    journalctl --rotate
    journalctl --vacuum-time=1s
    # The active files survive a vacuum: have journald write to /run until the
    # power-off, so that no journal of the build boot (under the build's
    # machine-id) stays on disk.
    journalctl --relinquish-var
    find /var/log/journal -mindepth 1 -delete
fi
if in_chroot && [[ -d /var/log/journal ]]; then
    find /var/log/journal -mindepth 1 -delete
fi
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' -o -name '*.journal~' \) \
    -delete
find /var/log -type f ! -path '/var/log/journal/*' -exec truncate -s 0 {} +

announce "checking the result"
problems=()
compgen -G '/etc/ssh/ssh_host_*' >/dev/null && problems+=("SSH host keys remain")
[[ -f /etc/machine-id && ! -s /etc/machine-id ]] || problems+=("/etc/machine-id is not an empty file")
if [[ -n "$BUILD_USER" ]] && getent passwd "$BUILD_USER" >/dev/null \
    && { in_chroot || ! user_has_processes "$BUILD_USER"; }; then
    problems+=("build user $BUILD_USER still exists")
fi
[[ ! -e "$HUBKILN_APT_PROXY_DROPIN" ]] || problems+=("apt proxy drop-in remains")
[[ ! -e /home/.hubkiln/caddy ]] || problems+=("the front's ACME state (/home/.hubkiln/caddy) remains")
[[ ! -e /etc/hubkiln/front/plan.json ]] || problems+=("the front's plan.json remains")
grep -qx 'AuthorizedKeysFile /etc/ssh/hubkiln-keys/%u' /etc/ssh/sshd_config.d/30-hubkiln-keys.conf \
    || problems+=("sshd would read keys from homes")
[[ ! -e /var/lib/fail2ban/fail2ban.sqlite3 ]] || problems+=("fail2ban's database remains")
[[ -z "$(find /var/log/journal -mindepth 1 -print -quit 2>/dev/null)" ]] \
    || problems+=("the build's journal remains in /var/log/journal")
[[ -z "$(find /var/lib/hubkiln/secrets /var/lib/hubkiln/hub /etc/hubkiln/tls -mindepth 1 \
    -print -quit 2>/dev/null)" ]] || problems+=("hub secrets, database or TLS files remain")
[[ -z "$(find /var/lib/apt/lists -type f ! -name lock -print -quit)" ]] \
    || problems+=("apt lists are not empty")
[[ -z "$(find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*' -print -quit)" ]] \
    || problems+=("/tmp or /var/tmp is not empty")
((${#problems[@]} == 0)) || die "sealing left problems: $(printf '%s; ' "${problems[@]}")"

if in_chroot; then
    announce "in a chroot: skipping fstrim (the image tool compacts the disk)"
else
    announce "trimming free space so that the captured disk stays small"
    sync
    # Disks without discard support make fstrim fail; the image is still good,
    # only larger, so we report and go on.
    fstrim -av || warn "fstrim failed: the disk does not support discard"
fi
