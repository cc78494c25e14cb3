"""Putting a validated image in front of a class.

`seed` turns launch settings into cloud-init user-data and a NoCloud seed (`invoke
seed`), `local` boots the image here with them (`invoke launch`), and publishing puts
the image on a hypervisor or a cloud (`invoke publish`): `artifact` (the image and its
facts), `libvirt` (imported and defined here), `clouds` (the exact commands, printed).
"""
