#!/usr/bin/env bash
# The hub's configuration and services: /etc/hubkiln/jupyterhub_config.py (static;
# it reads /etc/hubkiln/hub.d/*.yaml), the profile's settings as
# /etc/hubkiln/hub.d/00-profile.yaml, the hub's own modules in its venv (the settings
# contract settings.schema.yaml with hubkiln_schema, hubkiln_hub settings rules,
# hubkiln_front the HTTPS front's rules, hubkiln_auth logins, hubkiln_lti the LTI 1.3
# login's rules, hubkiln_spawner
# students' servers, hubkiln_schedule and hubkiln_prestart: pre-starting servers
# before classes), the helpers in /usr/local/sbin (hubkiln-firstboot,
# hubkiln-apply-launch, hubkiln-prepare-user), the accounts and groups the hub uses,
# and the units jupyterhub, jupyterhub-proxy and hubkiln-firstboot (enabled, not started).
# No secret is made here: hubkiln-firstboot makes them at first boot.
#
# Inputs:
#   HUBKILN_HUB_SETTINGS_FILE  optional, a hub settings drop-in (YAML, $defs/hub of
#                         files/hub/settings.schema.yaml: the build writes the profile's
#                         authenticator, admins, limits, idle_culling, default_ui,
#                         content.delivery, kernel_display_name and tls). It is checked,
#                         then installed as 00-profile.yaml. Empty: the schema's defaults.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

HUB_ENV="$HUBKILN_PREFIX/hub"
HUB_PY="$HUB_ENV/bin/python"
SRC="$HUBKILN_FILES"
ETC=/etc/hubkiln
SBIN=/usr/local/sbin
UNITS=(hubkiln-firstboot.service jupyterhub-proxy.service jupyterhub.service)
[[ -x "$HUB_PY" ]] || die "$HUB_PY is missing: run 20-hub-env.sh first"
command -v openssl >/dev/null || die "openssl is missing (hubkiln-firstboot needs it): run 10-apt-packages.sh first"

announce "installing the settings contract (settings.schema.yaml, hubkiln_schema) and the modules hubkiln_hub (settings), hubkiln_front (HTTPS front), hubkiln_auth (logins), hubkiln_lti (LTI 1.3), hubkiln_spawner (students' servers), hubkiln_schedule and hubkiln_prestart (pre-start before classes) into the hub environment"
site="$("$HUB_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
install -m 0644 -o root -g root "$SRC/hub/settings.schema.yaml" "$site/settings.schema.yaml"
for module in hubkiln_schema hubkiln_hub hubkiln_front hubkiln_auth hubkiln_lti hubkiln_spawner \
    hubkiln_schedule hubkiln_prestart; do
    install -m 0644 -o root -g root "$SRC/hub/$module.py" "$site/$module.py"
    "$HUB_PY" -m compileall -q "$site/$module.py"
done
"$HUB_PY" -c 'import hubkiln_auth; hubkiln_auth.HubkilnFirstUseAuthenticator, hubkiln_auth.HubkilnNativeAuthenticator' \
    || die "the login module hubkiln_auth does not load in the hub environment"
"$HUB_PY" -c 'import hubkiln_lti; hubkiln_lti.HubkilnLTI13Authenticator' \
    || die "the LTI 1.3 login module hubkiln_lti does not load in the hub environment"
"$HUB_PY" -c 'import hubkiln_prestart' \
    || die "the pre-start service hubkiln_prestart does not load in the hub environment"
check_root_owned "$site/__pycache__"

install -d -m 0755 -o root -g root "$ETC" "$ETC/hub.d"
settings="${HUBKILN_HUB_SETTINGS_FILE:-}"
if [[ -n "$settings" ]]; then
    announce "checking $settings and installing it as $ETC/hub.d/00-profile.yaml"
    [[ -f "$settings" ]] || die "HUBKILN_HUB_SETTINGS_FILE=$settings: no such file"
    # Every problem at once, located; an OAuth client is refused (given at launch only).
    "$HUB_PY" -m hubkiln_hub check-dropin "$settings" || die "$settings: not hub settings (above)"
    install -m 0644 -o root -g root "$settings" "$ETC/hub.d/.00-profile.yaml.new"
    mv -f "$ETC/hub.d/.00-profile.yaml.new" "$ETC/hub.d/00-profile.yaml"
else
    announce "no HUBKILN_HUB_SETTINGS_FILE: the hub keeps the schema's defaults"
    rm -f "$ETC/hub.d/00-profile.yaml"
fi

announce "installing $ETC/jupyterhub_config.py"
install -m 0644 -o root -g root "$SRC/hub/jupyterhub_config.py" "$ETC/jupyterhub_config.py"

announce "installing hubkiln-firstboot, hubkiln-apply-launch and hubkiln-prepare-user into $SBIN"
for tool in hubkiln-firstboot hubkiln-apply-launch hubkiln-prepare-user hubkiln-autogroup-nice \
    hubkiln-wait-listening hubkiln-hub; do
    install -m 0755 -o root -g root "$SRC/bin/$tool" "$SBIN/$tool"
done

announce "creating the groups hubkiln-students and hubkiln-admins and the hub services' users hubkiln-culler and hubkiln-prestart"
for group in hubkiln-students hubkiln-admins; do
    getent group "$group" >/dev/null || groupadd --system "$group"
done
getent group sudo >/dev/null || die "group sudo is missing (is sudo installed?)"
for service_user in "hubkiln-culler:hubkiln idle culler" "hubkiln-prestart:hubkiln class pre-start"; do
    name="${service_user%%:*}"
    if ! getent passwd "$name" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "${service_user#*:}" "$name"
    fi
done

announce "letting hub admins use sudo (they log in with SSH keys only, without a password)"
printf '%s\n' "# Installed by hubkiln: admins named at launch (hubkiln-apply-launch) have no password." \
    "%hubkiln-admins ALL=(ALL:ALL) NOPASSWD: ALL" >/etc/sudoers.d/.hubkiln-admins.new
chmod 0440 /etc/sudoers.d/.hubkiln-admins.new
visudo -cqf /etc/sudoers.d/.hubkiln-admins.new || die "the sudo rule for hubkiln-admins does not parse"
mv -f /etc/sudoers.d/.hubkiln-admins.new /etc/sudoers.d/hubkiln-admins

announce "creating /etc/ssh/hubkiln-keys, the admins' root-owned key files (90-seal.sh makes sshd read only them)"
install -d -m 0755 -o root -g root /etc/ssh/hubkiln-keys

announce "denying SSH to students (group hubkiln-students)"
install -d -m 0755 /etc/ssh/sshd_config.d
printf '%s\n' "# Installed by hubkiln: students use the hub in a browser, never SSH." \
    "DenyGroups hubkiln-students" >/etc/ssh/sshd_config.d/40-hubkiln-students.conf
chmod 0644 /etc/ssh/sshd_config.d/40-hubkiln-students.conf

announce "creating the hub's state folders (empty; secrets are made at first boot)"
install -d -m 0755 -o root -g root /var/lib/hubkiln
install -d -m 0700 -o root -g root /var/lib/hubkiln/hub /var/lib/hubkiln/secrets

announce "installing and enabling ${UNITS[*]}"
for unit in "${UNITS[@]}"; do
    install -m 0644 -o root -g root "$SRC/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl enable "${UNITS[@]}"
announce "giving the hub, its proxy and the front the CPU first at class start"
for unit in jupyterhub.service jupyterhub-proxy.service hubkiln-front.service; do
    install -d -m 0755 -o root -g root "/etc/systemd/system/$unit.d"
    install -m 0644 -o root -g root "$SRC/systemd/hubkiln-class-priority.conf" \
        "/etc/systemd/system/$unit.d/10-hubkiln-class-priority.conf"
done
announce "jupyterhub.service is active once the hub serves; cloud-init's config stage waits for it"
install -m 0644 -o root -g root "$SRC/systemd/hubkiln-hub-ready.conf" \
    /etc/systemd/system/jupyterhub.service.d/20-hubkiln-hub-ready.conf
install -d -m 0755 -o root -g root /etc/systemd/system/cloud-config.service.d
install -m 0644 -o root -g root "$SRC/systemd/hubkiln-boot-after-hub.conf" \
    /etc/systemd/system/cloud-config.service.d/10-hubkiln-after-hub.conf
announce "installing hubkiln-students.slice (students' servers; started with the first one)"
install -m 0644 -o root -g root "$SRC/systemd/hubkiln-students.slice" \
    /etc/systemd/system/hubkiln-students.slice

announce "checking the baked settings"
"$HUB_PY" -m hubkiln_hub check-baked "$ETC/hub.d" >/dev/null
if missing="$("$HUB_PY" -m hubkiln_hub check "$ETC/hub.d" 2>&1 >/dev/null)"; then
    announce "loading $ETC/jupyterhub_config.py as JupyterHub does"
    "$HUB_PY" -c 'from traitlets.config.loader import PyFileConfigLoader as L
c = L("jupyterhub_config.py", path="/etc/hubkiln").load_config()
print("authenticator:", c.JupyterHub.authenticator_class, "| default_url:", c.Spawner.default_url)'
else
    # e.g. an OAuth login: its client comes with the launch settings.
    announce "the hub needs launch settings before it can start (expected for OAuth logins):"
    printf '    %s\n' "$missing"
fi
