"""raagr2-slim importable code: networks, losses, metrics, transforms, handlers used by the bundles."""
