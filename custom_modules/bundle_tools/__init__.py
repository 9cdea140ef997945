"""Tools that write MONAI bundle folders: variant bundles generated from a base bundle plus what differs."""

from .network import bundle_network
from .variant import VARIANT_FILE, load_variant_spec, render_variant_bundle, write_variant_bundle

__all__ = ["bundle_network", "VARIANT_FILE", "load_variant_spec", "render_variant_bundle", "write_variant_bundle"]
