#!/usr/bin/env bash
# OS hardening of the image (HARDENING.md "OS"), as drop-in files wherever the
# software reads a drop-in directory: sysctls, kernel modules, mount options,
# core dumps, SSH, sudo, accounts and umask, file permissions and the SUID/SGID
# allowlist, journald and auditd, the nftables firewall (cloud metadata for root
# only), fail2ban for SSH and the hub's login form,
# security-only unattended upgrades without reboot, AppArmor, the login banner
# and Lynis' profile. Files come from files/hardening/; see provision/README.md.
#
# Runs in a chroot (nothing is started: units are enabled only) or in a booted
# VM: there too nothing is restarted, so that the SSH session of the build
# survives; every setting takes effect at the next boot (the captured image).
# Idempotent: each step installs whole files or replaces one key.
#
# Inputs:
#   HUBKILN_HARDENING  optional, JSON object: enabled (bool), ssh_allowed_networks
#                      (CIDR list), extra_open_ports (TCP port list), ptrace_scope
#                      (0-3). Empty: the defaults (enabled, SSH from anywhere,
#                      no extra port, ptrace_scope 1).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

SRC="$HUBKILN_FILES/hardening"
HELPER="$SRC/hubkiln_hardening.py"
SETTINGS="${HUBKILN_HARDENING:-}"
[[ -n "$SETTINGS" ]] || SETTINGS='{}'
# Packages HARDENING.md forbids (clear-text logins, NIS, TFTP, inetd, FTP servers).
FORBIDDEN_PACKAGES=(telnet telnetd inetutils-telnet inetutils-telnetd rsh-client rsh-server
    rsh-redone-client rsh-redone-server nis tftp tftpd tftpd-hpa tftp-hpa xinetd
    openbsd-inetd inetutils-inetd vsftpd proftpd-basic pure-ftpd ftpd inetutils-ftpd)

# install_file SRC DEST MODE: install one file, root-owned, creating its folder.
install_file() {
    install -D -m "$3" -o root -g root "$1" "$2"
}

# set_option FILE KEY LINE: replace the uncommented KEY line of a vendor file
# that has no drop-in folder with LINE, or append LINE.
set_option() {
    local file=$1 key=$2 line=$3
    if grep -qE "^[[:space:]]*${key}([[:space:]]|=)" "$file"; then
        sed -i -E "s#^[[:space:]]*${key}([[:space:]]|=).*#${line}#" "$file"
    else
        printf '%s\n' "$line" >>"$file"
    fi
}

announce "checking HUBKILN_HARDENING"
checked="$(printf '%s' "$SETTINGS" | python3 "$HELPER" check)" \
    || die "HUBKILN_HARDENING is not valid (see above): fix the profile's hardening section"
ENABLED="$(sed -n 's/^enabled=//p' <<<"$checked")"
PTRACE_SCOPE="$(sed -n 's/^ptrace_scope=//p' <<<"$checked")"
announce "recording the settings in /etc/hubkiln/hardening.json (read by the image tests)"
install -d -m 0755 /etc/hubkiln
printf '%s' "$SETTINGS" | python3 "$HELPER" json >/etc/hubkiln/hardening.json
chmod 0644 /etc/hubkiln/hardening.json
if [[ "$ENABLED" != true ]]; then
    announce "hardening.enabled is false: the image gets NO hardening (debugging only); nothing done"
    exit 0
fi

announce "checking that 10-apt-packages.sh installed the hardening tools"
for tool in nft auditctl fail2ban-client apparmor_parser unattended-upgrade lynis sshd visudo; do
    command -v "$tool" >/dev/null \
        || die "$tool is missing: run 10-apt-packages.sh (it installs the hardening packages) first"
done
getent group hubkiln-admins >/dev/null \
    || die "group hubkiln-admins is missing: run 50-hub-config.sh first (SSH allows only that group)"

announce "refusing packages HARDENING.md forbids (telnet, rsh, NIS, TFTP, inetd, FTP servers)"
installed=()
for pkg in "${FORBIDDEN_PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        installed+=("$pkg")
    fi
done
((${#installed[@]} == 0)) \
    || die "forbidden packages are installed: ${installed[*]} (remove them from the profile's apt_packages)"

announce "sysctls: network and kernel hardening, ptrace_scope $PTRACE_SCOPE from the profile"
# 99-zz-: sysctl.d files apply in name order across /usr/lib and /etc, and the
# vendors' 99-protect-links.conf (and sysctl.conf as 99-sysctl.conf) come before.
install_file "$SRC/sysctl.d/99-zz-hubkiln-hardening.conf" /etc/sysctl.d/99-zz-hubkiln-hardening.conf 0644
printf '%s\n' "# Installed by hubkiln (provision/80-hardening.sh) from the profile's hardening.ptrace_scope." \
    "# 1: students may debug their own kernels' children; 2: only root may trace." \
    "kernel.yama.ptrace_scope = $PTRACE_SCOPE" >/etc/sysctl.d/99-zz-hubkiln-ptrace.conf
chmod 0644 /etc/sysctl.d/99-zz-hubkiln-ptrace.conf

announce "kernel modules: file systems, USB storage, FireWire and rare protocols cannot load"
install_file "$SRC/modprobe.d/hubkiln-hardening.conf" /etc/modprobe.d/hubkiln-hardening.conf 0644

announce "mounts: /tmp and /home nodev,nosuid (bind mounts); /dev/shm also noexec"
for unit in tmp.mount home.mount hubkiln-shm-noexec.service; do
    install_file "$SRC/systemd/$unit" "/etc/systemd/system/$unit" 0644
done
systemctl enable tmp.mount home.mount hubkiln-shm-noexec.service

announce "no core dumps: limits.d for logins, DefaultLimitCORE for services"
install_file "$SRC/limits.d/60-hubkiln-core.conf" /etc/security/limits.d/60-hubkiln-core.conf 0644
install_file "$SRC/systemd/60-hubkiln-core.conf" /etc/systemd/system.conf.d/60-hubkiln-core.conf 0644
install_file "$SRC/systemd/60-hubkiln-coredump.conf" \
    /etc/systemd/coredump.conf.d/60-hubkiln-coredump.conf 0644

announce "SSH: keys only, admins only (AllowGroups hubkiln-admins), modern algorithms, Ed25519 and ECDSA host keys"
install_file "$SRC/sshd_config.d/10-hubkiln-hardening.conf" \
    /etc/ssh/sshd_config.d/10-hubkiln-hardening.conf 0644
install_file "$SRC/systemd/ssh-after-firstboot.conf" \
    /etc/systemd/system/ssh.service.d/10-hubkiln-after-firstboot.conf 0644
install_file "$SRC/cloud/50-hubkiln-ssh-host-keys.cfg" \
    /etc/cloud/cloud.cfg.d/50-hubkiln-ssh-host-keys.cfg 0644
make_scratch
# sshd -t needs a host key (the seal removes the image's) and its privilege separation folder.
ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/hostkey"
install -d -m 0755 /run/sshd
sshd -t -f /etc/ssh/sshd_config -h "$SCRATCH/hostkey" \
    || die "sshd rejects its configuration with the hardening drop-in"

announce "sudo: use_pty, a log file, umask 022 for commands run as root"
install -m 0440 -o root -g root "$SRC/sudoers.d/10-hubkiln-hardening" /etc/sudoers.d/.10-hubkiln-hardening.new
visudo -cqf /etc/sudoers.d/.10-hubkiln-hardening.new || die "the sudo hardening rules do not parse"
mv -f /etc/sudoers.d/.10-hubkiln-hardening.new /etc/sudoers.d/10-hubkiln-hardening

announce "accounts: login umask 027, system accounts without a login shell, root the only UID 0"
set_option /etc/login.defs UMASK $'UMASK\t\t027'
install_file "$SRC/profile.d/hubkiln-umask" /etc/profile.d/hubkiln-umask.sh 0644
uid_min="$(awk '$1 == "UID_MIN" {print $2}' /etc/login.defs)"
while IFS=: read -r name _ uid _ _ _ shell; do
    if [[ "$name" != root && "$uid" -lt "${uid_min:-1000}" ]] \
        && [[ "$shell" != */nologin && "$shell" != */false ]]; then
        announce "  $name (uid $uid): shell $shell -> /usr/sbin/nologin"
        usermod --shell /usr/sbin/nologin "$name"
    fi
done </etc/passwd
extra_root="$(awk -F: '$3 == 0 && $1 != "root" {print $1}' /etc/passwd)"
[[ -z "$extra_root" ]] || die "accounts other than root have UID 0: $extra_root"
while IFS=: read -r name hash _; do
    if [[ -z "$hash" ]]; then
        announce "  $name has an empty password: locking it"
        passwd -l "$name" >/dev/null
    fi
done </etc/shadow
chmod 0700 /root

announce "files: cron files root-only, no unexpected SUID/SGID file, nothing world-writable"
for path in /etc/crontab /etc/cron.d /etc/cron.hourly /etc/cron.daily /etc/cron.weekly \
    /etc/cron.monthly; do
    if [[ -e "$path" ]]; then
        chown root:root "$path"
        chmod og-rwx "$path"
    fi
done
mapfile -t allowed < <(grep -Ev '^[[:space:]]*(#|$)' "$SRC/suid-allowlist.txt")
unexpected=()
while IFS= read -r -d '' file; do
    [[ " ${allowed[*]} " == *" $file "* ]] || unexpected+=("$file")
done < <(find / -xdev -type f -perm /6000 -print0)
((${#unexpected[@]} == 0)) || die "SUID/SGID files not in files/hardening/suid-allowlist.txt:" \
    "${unexpected[*]} (remove the bit, or add the file to the allowlist after review)"
mapfile -t writable < <(find / -xdev \( \( -type f -perm -0002 \) \
    -o \( -type d -perm -0002 ! -perm -1000 \) \) -print)
((${#writable[@]} == 0)) || die "world-writable files or non-sticky folders: ${writable[*]:0:20}"

announce "logging: persistent, compressed journal; auditd rules, never halting on a full disk"
install_file "$SRC/journald.conf.d/60-hubkiln.conf" /etc/systemd/journald.conf.d/60-hubkiln.conf 0644
install -d -m 2755 -o root -g systemd-journal /var/log/journal
install_file "$SRC/audit/50-hubkiln.rules" /etc/audit/rules.d/50-hubkiln.rules 0640
for key in disk_full_action disk_error_action admin_space_left_action; do
    set_option /etc/audit/auditd.conf "$key" "$key = SUSPEND"
done
set_option /etc/audit/auditd.conf space_left_action "space_left_action = SYSLOG"
set_option /etc/audit/auditd.conf max_log_file_action "max_log_file_action = ROTATE"
systemctl enable auditd.service

announce "firewall: nftables, incoming only SSH (admin networks), 80, 443 and the profile's ports;" \
    "cloud metadata over TCP for root only"
printf '%s' "$SETTINGS" | python3 "$HELPER" nftables >"$SCRATCH/nftables.conf"
# Checked in a network namespace of its own: never against the build host's ruleset.
unshare --net nft -c -f "$SCRATCH/nftables.conf" || die "nft rejects the rendered ruleset"
install_file "$SCRATCH/nftables.conf" /etc/nftables.conf 0644
systemctl enable nftables.service

announce "fail2ban: bans repeated SSH failures and failed hub logins (journal backend, nftables bans)"
install_file "$SRC/fail2ban/jail.local" /etc/fail2ban/jail.local 0644
install_file "$SRC/fail2ban/filter.d/hubkiln-hub.conf" /etc/fail2ban/filter.d/hubkiln-hub.conf 0644
printf '%s' "$SETTINGS" | python3 "$HELPER" hub-jail >"$SCRATCH/hubkiln-hub.local"
install_file "$SCRATCH/hubkiln-hub.local" /etc/fail2ban/jail.d/hubkiln-hub.local 0644
# The filter must take the client's address from the hub's access log line (a TEST-NET one).
sample='[W 2026-01-01 00:00:00.000 JupyterHub log:192] 403 POST /hub/login?next= (@192.0.2.10) 2511.30ms'
found="$(fail2ban-regex -o ip "$sample" /etc/fail2ban/filter.d/hubkiln-hub.conf)" \
    || die "fail2ban-regex cannot read files/hardening/fail2ban/filter.d/hubkiln-hub.conf"
[[ "$found" == 192.0.2.10 ]] \
    || die "the hubkiln-hub filter does not find the client in a failed hub login line (got: $found)"
install_file "$SRC/systemd/fail2ban-after-firstboot.conf" \
    /etc/systemd/system/fail2ban.service.d/10-hubkiln.conf 0644
fail2ban-client --test >/dev/null || die "fail2ban rejects its configuration"
systemctl enable fail2ban.service

announce "updates: security updates every day, no automatic reboot"
install_file "$SRC/apt/20auto-upgrades" /etc/apt/apt.conf.d/20auto-upgrades 0644
install_file "$SRC/apt/52hubkiln-unattended-upgrades" \
    /etc/apt/apt.conf.d/52hubkiln-unattended-upgrades 0644
apt-config dump Unattended-Upgrade::Origins-Pattern | grep -q -- '-security' \
    || die "unattended-upgrades has no security origin after the drop-in"
if apt-config dump Unattended-Upgrade::Origins-Pattern | grep -q -- '-updates'; then
    die "unattended-upgrades would install more than security updates"
fi
systemctl enable apt-daily.timer apt-daily-upgrade.timer

announce "AppArmor: enabled, profiles loaded at boot; profiles of programs the image lacks disabled"
systemctl enable apparmor.service
install -d -m 0755 -o root -g root /etc/apparmor.d/disable
# Only profiles that attach to nothing in this tree (hubkiln_hardening.py
# apparmor-unused); each can be enabled again by removing its symlink.
while IFS= read -r profile; do
    [[ -n "$profile" ]] || continue
    ln -sfn "/etc/apparmor.d/$profile" "/etc/apparmor.d/disable/$profile"
done < <(python3 "$HELPER" apparmor-unused /)

announce "login banner (/etc/issue, /etc/issue.net) and Lynis' profile for this image"
install_file "$SRC/issue" /etc/issue 0644
install_file "$SRC/issue" /etc/issue.net 0644
install_file "$SRC/lynis/custom.prf" /etc/lynis/custom.prf 0644

if in_chroot; then
    announce "in a chroot: nothing started; every setting applies at the first boot"
else
    announce "booted: nothing restarted (the build's SSH session stays); settings apply at the next boot"
fi
