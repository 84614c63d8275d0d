"""upgraded: the init side of the chain (PID 1, the bus, services, hand-over to stage2)."""
