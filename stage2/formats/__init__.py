"""Image formats: one module per format."""
