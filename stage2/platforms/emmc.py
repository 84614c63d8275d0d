"""eMMC (and other GPT block devices): where the configuration archive goes, as OpenWrt's ``emmc.sh``.

``emmc_do_upgrade`` writes ``root`` to the GPT partition named ``rootfs`` and records the bytes it wrote
rounded up to 64 KiB (128 sectors, libfstools' ``ROOTDEV_OVERLAY_ALIGN``): that is where the overlay
starts, and ``emmc_copy_config`` writes the gzip'd archive there raw. Without a backup the first 4 KiB
there are zeroed (the old overlay must not survive). With a separate ``rootfs_data`` partition the
overlay starts at its offset 0.

The boot side (preinit, another module) recognises the archive by its gzip magic at that offset
(fstools' ``FS_TARGZ``), extracts it, then formats the overlay. Both sides compute the offset with
``overlay_offset`` so they cannot disagree:

    from stage2.platforms.emmc import overlay_offset, is_config_archive
    start = overlay_offset(squashfs_bytes_used)   # bytes into the rootfs partition
    if is_config_archive(first_bytes_at(start)): ...

Pure, standard library only.
"""

from __future__ import annotations

ALIGN = 64 * 1024  # ROOTDEV_OVERLAY_ALIGN: 128 sectors
WIPE_BYTES = 8 * 512  # without a backup: 8 sectors zeroed at the overlay start
GZIP_MAGIC = b"\x1f\x8b"


def overlay_offset(rootfs_bytes: int, align: int = ALIGN) -> int:
    """The overlay's byte offset in the rootfs partition: the root image's size rounded up to 64 KiB."""
    if rootfs_bytes < 0:
        raise ValueError(f"negative rootfs size {rootfs_bytes}")
    return -(-rootfs_bytes // align) * align


def is_config_archive(head: bytes) -> bool:
    """The overlay start holds a configuration archive written by ``emmc_copy_config`` (gzip)."""
    return head.startswith(GZIP_MAGIC)
