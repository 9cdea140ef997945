"""Edit-time bundle authoring: read a bundle folder's configs and generate variant bundles from a base bundle."""

from .config import apply_overrides, bundle_network, bundle_parser
from .variant import VARIANT_FILE, load_variant_spec, render_variant_bundle, write_variant_bundle

__all__ = [
    "VARIANT_FILE",
    "apply_overrides",
    "bundle_network",
    "bundle_parser",
    "load_variant_spec",
    "render_variant_bundle",
    "write_variant_bundle",
]
