#!/usr/bin/env bash
# Student work that outlives the image: /home on an optional data disk, uids that
# stay the same from one image to the next, and the new-term tool. Installs
# (from files/data/):
#   /usr/local/sbin/hubkiln-data-disk   finds the data disk at boot (a file system
#                                       labelled hubkiln-home, or the one blank
#                                       disk, which it formats), mounts it on /home
#   /usr/local/sbin/hubkiln-accounts    the uid registry /home/.hubkiln/accounts;
#                                       hubkiln-prepare-user and hubkiln-apply-launch
#                                       make accounts through it
#   /usr/local/sbin/hubkiln-term        archive the students' work, start a new term
#   hubkiln-data-disk.service           enabled (runs at boot, before cloud-init's
#                                       users, logins and the hub); not started here:
#                                       the build machine's disks are not the instance's
# Nothing is formatted or mounted at build time. Without a data disk the image
# behaves as before (/home on the OS disk, the registry there too).
#
# Inputs: none.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

SRC="$HUBKILN_FILES/data"
SBIN=/usr/local/sbin
UNIT=hubkiln-data-disk.service
HUB_PY="$HUBKILN_PREFIX/hub/bin/python"
[[ -x "$HUB_PY" ]] || die "$HUB_PY is missing (hubkiln-accounts runs on it): run 20-hub-env.sh first"
getent group hubkiln-students >/dev/null || die "group hubkiln-students is missing: run 50-hub-config.sh first"
for tool in mkfs.ext4 e2fsck wipefs blkid lsblk findmnt mountpoint udevadm useradd tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing from the image (e2fsprogs, util-linux, passwd, tar, coreutils)"
done

announce "installing hubkiln-data-disk, hubkiln-accounts and hubkiln-term into $SBIN"
for tool in hubkiln-data-disk hubkiln-accounts hubkiln-term; do
    install -m 0755 -o root -g root "$SRC/$tool" "$SBIN/$tool"
done
"$SBIN/hubkiln-accounts" --help >/dev/null || die "hubkiln-accounts does not run on $HUB_PY"

announce "installing and enabling $UNIT (runs at boot only)"
install -m 0644 -o root -g root "$SRC/$UNIT" "/etc/systemd/system/$UNIT"
systemctl enable "$UNIT"
