"""The build's stages, in the order `pipeline` runs them.

render (Packer templates) → rootfs (mmdebstrap, `cache`) → envs and config
(`provision` scripts in a `chroot`) → disk (GPT, `grub`) → bake (`packer` boots the
disk for the in-VM steps and the seal) → outputs (`formats`, `images`, `ova`,
`artifacts`: checked files, checksums, the manifest). Validation and the capacity
measure follow, in `hubkiln.validation` and `hubkiln.capacity`.
"""
