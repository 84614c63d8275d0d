"""Flash writers: one module per kind of target."""
