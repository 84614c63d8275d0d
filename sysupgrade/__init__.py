"""sysupgrade, stage 1 of the upgrade chain: validate the image, back up the config, ask upgraded.

Modules: ``cli`` (OpenWrt's ``sysupgrade`` command), ``validate`` (``validate_firmware_image``),
``backup`` (the config file list and ``/tmp/sysupgrade.tgz``), ``paths`` (OpenWrt's paths under
``WRT_ROOT``).
"""
