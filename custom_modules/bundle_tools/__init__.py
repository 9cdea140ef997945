"""Tools that write MONAI bundle folders: variant bundles generated from a base bundle plus what differs."""

from .network import bundle_network, bundle_parser
from .package import BundlePackager, PackagingError
from .variant import VARIANT_FILE, load_variant_spec, render_variant_bundle, write_variant_bundle
from .zoo_checks import ZOO_CHECKS, verify_bundle

__all__ = [
    "bundle_network", "bundle_parser", "VARIANT_FILE", "load_variant_spec", "render_variant_bundle", "write_variant_bundle",
    "BundlePackager", "PackagingError", "ZOO_CHECKS", "verify_bundle",
]
