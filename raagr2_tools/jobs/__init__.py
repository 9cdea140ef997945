"""Command-line jobs that drive the bundles the way a user does (``python -m monai.bundle run ...``)."""
