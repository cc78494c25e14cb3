#!/usr/bin/env bash
# Student work that outlives the image: /home on an optional data disk, uids that
# stay the same from one image to the next, and the new-term tool. Installs
# (from files/data/):
#   /usr/local/sbin/hubkiln-data-disk   finds the data disk at boot (a file system
#                                       labelled hubkiln-home, or the one new, all-zero
#                                       disk, which it formats), mounts it on /home
#                                       with user quotas; once used, the disk must
#                                       come back (its UUID is recorded on the OS disk)
#   /usr/local/sbin/hubkiln-accounts    the uid registry /home/.hubkiln/accounts;
#                                       hubkiln-prepare-user and hubkiln-apply-launch
#                                       make accounts through it
#   /usr/local/sbin/hubkiln-term        archive the students' work, start a new term
#   hubkiln-data-disk.service           enabled (runs at boot, before cloud-init's
#                                       users, logins and the hub); not started here:
#                                       the build machine's disks are not the instance's
# Nothing is formatted or mounted at build time. Without a data disk the image
# behaves as before (/home on the OS disk, the registry there too).
# Per-student quotas (hub.limits.disk), see docs/new-term.md "Disk quotas":
#   /usr/local/sbin/hubkiln-quota       at boot (hubkiln-quota.service, enabled; the
#   hubkiln-quota.service               hub Wants it, never Requires it): counts each
#                                       user's usage into aquota.user (quotacheck) on
#                                       / and /home, then quotaon; a kernel without
#                                       quota_v2 boots with quotas off, said loudly
# The file systems carry the usrquota mount option only (a flag: mounting needs
# no quota module), never the ext4 `quota` feature (a kernel without quota_v2
# cannot mount it writable: no boot). hubkiln-prepare-user sets each limit.
# The quota package's own units are masked, hubkiln-quota.service does their work
# in the right order: quota.service (a first quotacheck, once) and systemd's
# quotaon.service and systemd-quotacheck.service (pulled in by every usrquota
# mount; quotaon -aug would run before the quota files exist, or fail on a kernel
# without quota_v2 and mark the boot degraded; the names of systemd 256 and later,
# per mount, are masked too), and quotarpc.service (rpc.rquotad: no quota over RPC).
#
# Inputs: none.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

SRC="$HUBKILN_FILES/data"
SBIN=/usr/local/sbin
UNIT=hubkiln-data-disk.service
QUOTA_UNIT=hubkiln-quota.service
# Replaced by $QUOTA_UNIT (see above). Masking a name no package ships is harmless.
QUOTA_MASKED="quota.service quotarpc.service quotaon.service systemd-quotacheck.service
    quotaon-root.service systemd-quotacheck-root.service quotaon@.service systemd-quotacheck@.service"
HUB_PY="$HUBKILN_PREFIX/hub/bin/python"
[[ -x "$HUB_PY" ]] || die "$HUB_PY is missing (hubkiln-accounts runs on it): run 20-hub-env.sh first"
getent group hubkiln-students >/dev/null || die "group hubkiln-students is missing: run 50-hub-config.sh first"
for tool in mkfs.ext4 e2fsck tune2fs dumpe2fs wipefs blkid blockdev lsblk findmnt mountpoint \
    udevadm useradd tar sha256sum dd od modprobe; do
    command -v "$tool" >/dev/null || die "$tool is missing from the image (e2fsprogs, util-linux, passwd, tar, coreutils, kmod)"
done
for tool in setquota quotacheck quotaon repquota; do
    command -v "$tool" >/dev/null || die "$tool is missing: 10-apt-packages.sh must install the package quota"
done

announce "installing hubkiln-data-disk, hubkiln-accounts, hubkiln-term and hubkiln-quota into $SBIN"
for tool in hubkiln-data-disk hubkiln-accounts hubkiln-term hubkiln-quota; do
    install -m 0755 -o root -g root "$SRC/$tool" "$SBIN/$tool"
done
"$SBIN/hubkiln-accounts" --help >/dev/null || die "hubkiln-accounts does not run on $HUB_PY"

for unit in "$UNIT" "$QUOTA_UNIT"; do
    announce "installing and enabling $unit (runs at boot only)"
    install -m 0644 -o root -g root "$SRC/$unit" "/etc/systemd/system/$unit"
    systemctl enable "$unit"
done

announce "masking the quota package's and systemd's own quota units: $QUOTA_MASKED"
# shellcheck disable=SC2086 # a list of unit names
systemctl mask $QUOTA_MASKED
