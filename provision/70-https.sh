#!/usr/bin/env bash
# The HTTPS front: Caddy (from the OS archive, installed by 10-apt-packages.sh) as
# hubkiln-front.service on 443 and 80 (which redirects to HTTPS), in front of
# configurable-http-proxy on 127.0.0.1:8000. The package's caddy.service is masked.
# The config /etc/hubkiln/front/Caddyfile is written at boot by
# hubkiln-apply-launch: ACME (Let's Encrypt, or the launch's acme_ca) for a launch
# domain, serving the self-signed certificate hubkiln-firstboot makes for every
# name until the ACME one is issued (hubkiln-front-check.timer then switches the
# front to it, and reports while it is missing); a certificate given at launch; or
# the self-signed one. Caddy's ACME state lives in /home/.hubkiln/caddy (made at
# boot, on the data disk when there is one). No key and no front config are
# baked: only the empty folders.
#
# Inputs: none (tls.mode and tls.acme_email are hub settings: 50-hub-config.sh bakes
# them; files/hub/hubkiln_front.py holds the front's rules).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
require_root

HUB_PY="$HUBKILN_PREFIX/hub/bin/python"
[[ -x /usr/bin/caddy ]] || die "caddy is missing: add it to 10-apt-packages.sh's base packages"
getent group caddy >/dev/null || die "the caddy package did not create its group 'caddy'"
"$HUB_PY" -c 'import hubkiln_front' 2>/dev/null || die "hubkiln_front is missing: run 50-hub-config.sh first"

announce "creating /etc/hubkiln/front and /etc/hubkiln/tls (0750 root:caddy; keys come at boot)"
install -d -m 0755 -o root -g root /etc/hubkiln/front
install -d -m 0750 -o root -g caddy /etc/hubkiln/tls
install -d -m 0750 -o caddy -g caddy /var/lib/caddy

announce "installing hubkiln-front.service and hubkiln-front-check.{service,timer}; masking the package's caddy.service"
for unit in hubkiln-front.service hubkiln-front-check.service hubkiln-front-check.timer; do
    install -m 0644 -o root -g root "$HUBKILN_FILES/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl disable caddy.service caddy-api.service
systemctl mask caddy.service
systemctl enable hubkiln-front.service hubkiln-front-check.timer

announce "checking that caddy accepts the front configs (self-signed; ACME before and after issuing)"
make_scratch
"$HUB_PY" -m hubkiln_front caddyfile self-signed >"$SCRATCH/self-signed"
"$HUB_PY" -m hubkiln_front caddyfile acme hub.hubkiln.test >"$SCRATCH/acme"
"$HUB_PY" -m hubkiln_front caddyfile acme-issued hub.hubkiln.test >"$SCRATCH/acme-issued"
for config in self-signed acme acme-issued; do
    # HOME: caddy leaves a .step folder in its home; keep it in the scratch dir.
    HOME="$SCRATCH" caddy adapt --config "$SCRATCH/$config" --adapter caddyfile >/dev/null
done
HOME="$SCRATCH" caddy version
