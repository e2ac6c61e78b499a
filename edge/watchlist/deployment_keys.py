"""Which private key opens a bundle on this device, and destroying it when the deployment ends.

A bundle's content key is wrapped to a **per-deployment** X25519 key made on the device
(``edge keys deployment-key``) whose private half lives only in a directory on a RAM file
system (``[watchlist] deployment_keys_dir``, ``/run/edge/deployment-keys``: the unit's
``RuntimeDirectory=``, kept over a daemon restart by ``RuntimeDirectoryPreserve=yes``,
gone at a reboot or power loss). Each recipient in the bundle header names the key id it
is wrapped to; :meth:`BundleKeys.key_for` finds that key or refuses with one line:

- ``device_key_bundle``: the bundle is wrapped to the device's long-lived key
  (``device.key``, on the SD card): a copy of the card would open every copy of it, so it
  is refused unless ``[watchlist] allow_device_key_bundles`` (tests, development);
- ``no_deployment_key``: the key is not (or no longer) in the directory: lost at a reboot
  or power loss, or destroyed when its deployment ended. The bundle can never be opened
  again; the operator re-provisions it (``deploy-watchlist.yml``).

:meth:`BundleKeys.destroy` overwrites and removes a deployment key at every end of a
deployment (:mod:`edge.watchlist.deployment`); after that no copy of any file on the
device or the controller decrypts that deployment's watchlist.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused, UsageError
from edge.watchlist.bundle import BundleHeader, read_header_unverified
from edge.watchlist.keys import destroy_deployment_key, key_id, load_deployment_key

STAGED_SUFFIX = ".new"
"""Ansible delivers a new bundle to ``<bundle>.new``; the daemon shreds the old bundle and
destroys its key before it moves the new one into place (:func:`staged_path`)."""


def staged_path(bundle_path: Path) -> Path:
    """Where a replacement bundle is delivered: ``<bundle>.new`` beside the bundle."""
    return bundle_path.with_name(bundle_path.name + STAGED_SUFFIX)


def recipient_key_id(header: BundleHeader, device_id: str) -> str | None:
    """The id of the key the bundle is wrapped to for ``device_id``, or None."""
    return next((r.key_id for r in header.recipients if r.device_id == device_id), None)


def key_id_in(data: bytes, device_id: str) -> str | None:
    """The recipient key id for ``device_id`` in a bundle's header (signature not checked:
    used only to find which RAM key to destroy), or None if the header cannot be read."""
    try:
        return recipient_key_id(read_header_unverified(data)[1], device_id)
    except BundleRefused:
        return None


class BundleKeys:
    """Finds the private key a bundle is wrapped to for this device; destroys deployment keys."""

    def __init__(
        self,
        device_id: str,
        device_key: X25519PrivateKey,
        keys_dir: Path | None,
        allow_device_key: bool = False,
    ) -> None:
        self.device_id = device_id
        self._device_key = device_key
        self._device_kid = key_id(device_key.public_key()).hex()
        self.keys_dir = keys_dir
        self.allow_device_key = allow_device_key

    def key_for(self, header: BundleHeader) -> tuple[X25519PrivateKey, str | None]:
        """The key to open the bundle with and its deployment key id (None: the device key).

        A bundle with no recipient for this device gets the device key back, so that
        :func:`~edge.watchlist.bundle.open_bundle` refuses it as ``not_for_device``.
        Raises :class:`BundleRefused` (``device_key_bundle``, ``no_deployment_key``).
        """
        kid = recipient_key_id(header, self.device_id)
        if kid is None:
            return self._device_key, None
        if kid == self._device_kid:
            if self.allow_device_key:
                return self._device_key, None
            raise BundleRefused(
                "device_key_bundle",
                "bundle is wrapped to this device's long-lived key, which a copy of its "
                "storage would open: build it for a deployment key (edge keys deployment-key; "
                "[watchlist] allow_device_key_bundles is for tests only)",
            )
        if self.keys_dir is None:
            raise BundleRefused(
                "no_deployment_key",
                "no deployment key directory is configured ([watchlist] deployment_keys_dir); "
                "re-provision the bundle",
            )
        try:
            key = load_deployment_key(self.keys_dir, kid)
        except UsageError as exc:
            raise BundleRefused("no_deployment_key", f"{exc}; re-provision the bundle") from None
        if key is None:
            raise BundleRefused(
                "no_deployment_key",
                f"the deployment key this bundle is wrapped to ({kid[:16]}) is not on this "
                "device (lost at a reboot or power loss, or destroyed when its deployment "
                "ended): re-provision the bundle",
            )
        return key, kid

    def destroy(self, kid: str | None) -> str:
        """Overwrite and remove deployment key ``kid``: ``"destroyed"``, ``"absent"`` (none
        there, or ``kid`` None: a device-key bundle) or ``"failed: <why>"``."""
        if kid is None or self.keys_dir is None:
            return "absent"
        try:
            return "destroyed" if destroy_deployment_key(self.keys_dir, kid) else "absent"
        except (OSError, ValueError) as exc:
            return f"failed: {getattr(exc, 'strerror', None) or exc}"
