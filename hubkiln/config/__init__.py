"""What a build and a launch are asked for: profiles and launch settings, checked.

`profile` reads a course profile and what it extends and checks it against
`schema.yaml`, which embeds the image's own settings contract (`guest` imports the
image's modules, so that every rule exists once); `launch` checks a term's launch
settings, `certificates` their TLS material. Nothing is built or written after a
problem is found here, and every problem names its file and key path.
"""
