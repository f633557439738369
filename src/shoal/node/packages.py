"""Working-directory packages on the node (see runtime_env.py): received from
a driver (``package_put``) or a peer (PACKAGE), unpacked into the node's
packages directory (workers find it through SHOAL_PACKAGES_DIR), sent along
a link before the first forwarded task that needs one, removed at shutdown.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import shutil

from ..runtime_env import unpack
from ..transport import messages as m


class NodePackages:
    """Expects ``self.packages`` ({package id: bytes}) and ``self.packages_dir``."""

    def _svc_package_put(self, client, request_id, reply, wd, data) -> None:
        if not isinstance(wd, bytes) or not isinstance(data, bytes):
            raise ValueError("package_put needs (package id bytes, package bytes)")
        self._keep_package(wd, data)
        reply(True, None)

    def _keep_package(self, wd: bytes, data: bytes) -> None:
        if wd not in self.packages:
            unpack(self.packages_dir, wd, data)
            self.packages[wd] = data

    def _l_package(self, link, msg, freed) -> None:
        self._keep_package(msg[1], msg[2])

    def _send_package(self, link, spec) -> None:
        """Before forwarding ``spec``: the peer gets its package if it needs it."""
        wd = spec.options.get("wd") if spec.options else None
        if wd is not None and wd not in link.packages and wd in self.packages:
            link.packages.add(wd)
            self._send(link, (m.PACKAGE, wd, self.packages[wd]))

    def _remove_packages(self) -> None:
        if self.packages:
            shutil.rmtree(self.packages_dir, ignore_errors=True)
