"""Stage 2: the upgrade state machine and what it executes."""
