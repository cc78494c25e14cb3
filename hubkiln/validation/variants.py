"""Settings variants: one built image, booted with another profile's hub settings.

Several options of a profile reach the image only as its hub settings drop-in,
`/etc/hubkiln/hub.d/00-profile.yaml` (hubkiln/stages/provision.py `hub_settings`):
the login method, the admins, the limits, idle culling, the default UI, the content
delivery and the TLS mode. Every login method's packages are in every image. So an
image built from profile A, whose drop-in is replaced by the one profile B would
bake, is the image B's build would make, when A and B differ only in those keys:
`invoke validate --variant=B.yaml` boots it so (in the container engine, on a
throwaway overlay) and runs the image tests against B's settings.

`check_variant` refuses a variant that changes anything else (a package, the OS,
the kernel's display name, the hardening, the content folders: those are baked
by the build steps), naming the file and the key, so that a variant never proves
an image nobody could build. Limits: only the container engine boots a variant
(the VM boots the artifact as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubkiln.config.profile import Profile, display_path, format_keypath, load_profile
from hubkiln.errors import ProfileError
from hubkiln.stages.provision import HUB_SETTINGS_DROPIN, render_hub_settings

#: The key paths of a profile whose only effect on the image is its hub settings
#: drop-in (hub_settings reads them; no build step does), and those that name or
#: describe the profile.
SETTINGS_ONLY: tuple[tuple[str, ...], ...] = (
    ("name",), ("description",), ("extends",), ("hub",), ("tls",), ("content", "delivery"))


@dataclass(frozen=True)
class Variant:
    """A profile whose hub settings an image is booted with, and the files that does it."""

    profile: Profile
    files: dict[str, str]  # absolute path in the image -> content


def baked_differences(image: dict[str, Any], variant: dict[str, Any],
                      at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths where `variant` differs from `image` outside SETTINGS_ONLY (pure)."""
    if at in SETTINGS_ONLY:
        return []
    if isinstance(image, dict) and isinstance(variant, dict):
        found: list[tuple[str, ...]] = []
        for key in sorted(set(image) | set(variant)):
            if key not in image or key not in variant:
                if (*at, key) not in SETTINGS_ONLY:
                    found.append((*at, key))
                continue
            found += baked_differences(image[key], variant[key], (*at, key))
        return found
    return [] if image == variant else [at]


def check_variant(image_profile: Profile, variant: Profile) -> Variant:
    """The variant, or ProfileError naming each baked key it changes."""
    changed = baked_differences(image_profile.data, variant.data)
    if changed:
        where = display_path(variant.path)
        raise ProfileError([
            f"{where}: {format_keypath(keypath)}: differs from the profile "
            f"{image_profile.name!r} the image was built from; a variant may change only "
            "the hub settings (hub, tls, content.delivery): build this profile as its own "
            "image instead" for keypath in changed])
    return Variant(variant, {HUB_SETTINGS_DROPIN: render_hub_settings(variant)})


def load_variant(image_profile: Profile, ref: str) -> Variant:
    """Load the variant profile `ref` (a name in profiles/ or a path) and check it."""
    return check_variant(image_profile, load_profile(ref))
