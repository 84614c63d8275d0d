"""The `mtd` command: OpenWrt mtd-compatible flags and messages over our MTD writer."""
