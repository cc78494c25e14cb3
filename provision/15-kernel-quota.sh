#!/usr/bin/env bash
# The quota format modules (quota_v2, quota_tree) for every kernel of the image,
# and a kernel hook that gives them to each kernel installed later, so that
# hubkiln-quota.service can turn the per-student disk quotas on (hub.limits.disk).
# Installs (from files/quota/):
#   /etc/kernel/postinst.d/hubkiln-quota-modules   run by the kernel packages for each
#                                                  new kernel (unattended upgrades too):
#                                                  takes the two modules out of
#                                                  linux-modules-extra-VERSION (Ubuntu),
#                                                  never fails the upgrade
#   /etc/kernel/postrm.d/hubkiln-quota-modules     removes them with their kernel
# then runs the hook for each kernel under /lib/modules and fails the build when a
# kernel still lacks them (Debian's kernels have them: nothing to do there).
# Why not linux-modules-extra itself: 110 MB for two modules (and
# linux-image-generic pulls linux-firmware). Why not the ext4 quota feature: a
# kernel without the modules could not mount / writable; with usrquota and quota
# files a kernel without them boots with quotas off, said loudly (hubkiln-quota).
#
# Inputs: none (apt-get uses the sources and the build's apt proxy of 10-apt-packages.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

SRC="$HUBKILN_FILES/quota"
HOOK=/etc/kernel/postinst.d/hubkiln-quota-modules
CLEANUP=/etc/kernel/postrm.d/hubkiln-quota-modules
for tool in apt-get dpkg-deb tar depmod modinfo; do
    command -v "$tool" >/dev/null || die "$tool is missing from the image (apt, dpkg, tar, kmod)"
done

announce "installing the kernel hooks $HOOK and $CLEANUP"
install -d -m 0755 "${HOOK%/*}" "${CLEANUP%/*}"
install -m 0755 -o root -g root "$SRC/hubkiln-quota-modules" "$HOOK"
install -m 0755 -o root -g root "$SRC/hubkiln-quota-modules-postrm" "$CLEANUP"

mapfile -t kernels < <(find /lib/modules -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
((${#kernels[@]})) || die "no kernel under /lib/modules: the image has no kernel package"
for kernel in "${kernels[@]}"; do
    announce "the quota modules for kernel $kernel"
    "$HOOK" "$kernel"
    "$HOOK" --check "$kernel" || die "kernel $kernel still has no quota_v2/quota_tree module (see" \
        "the warning above): the image would boot with disk quotas off"
done
