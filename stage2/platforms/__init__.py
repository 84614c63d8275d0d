"""Platform profiles: which writer and which config method a board uses, detected as OpenWrt does."""
