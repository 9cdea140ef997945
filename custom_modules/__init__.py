"""The runtime layer of raagr2-slim: everything a bundle config names when it runs.

Networks (and the rebuild of pruned networks), losses, metrics, transforms, datalist loading, Ignite handlers,
inference backends and the slice inferer, plus the constants and file helpers they share. This package imports
itself only relatively and never imports the tooling (``raagr2_tools``, ``data_prep``, ``benchmarks``), so a
packaged bundle ships it unchanged as its ``scripts/`` folder.

Importing it (any bundle run does) makes an uncaught error end with one line naming its root cause, see
:mod:`.errors`, and switches off the telemetry of OpenVINO's tools and NNCF, see :mod:`.telemetry`.
"""

from .errors import install_last_line_hook
from .telemetry import disable_telemetry

install_last_line_hook()
disable_telemetry()


def bundle_root() -> str:
    """The folder that holds this package, as an absolute path.

    In a packaged bundle this package is the bundle's ``scripts/``, so this is the unzipped bundle folder
    wherever it lies: its configs' ``"bundle_root": {"_target_": "scripts.bundle_root"}``.
    """
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
