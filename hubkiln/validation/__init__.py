"""Validation: boot the built image fresh and prove it with tests/image.

`engines` plans which machine runs which tests and keeps the record, `imagetest`
boots the machines and runs pytest-testinfra against them, `audit` reads Lynis and
pip-audit, `boottime` systemd-analyze. Only this package validates; the profile and
the templates are checked (hubkiln.config, hubkiln.stages.render).
"""
