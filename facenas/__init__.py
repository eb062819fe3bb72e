"""facenas: global macro-micro neural architecture search for compact face-recognition networks.

Implements "Efficient Global Neural Architecture Search" (Siddiqui, Kyrkou, Theocharides, arXiv 2502.03553)
as the authors' code runs it, and applies it to faces. Importing the package is cheap: nothing heavy
(torch included) is imported until a sub-package that needs it is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from facenas.errors import ConfigError, DataError, FacenasError  # noqa: E402
from facenas.space.arch import Arch, Profile  # noqa: E402

__all__ = ["Arch", "ConfigError", "DataError", "FacenasError", "Profile", "__version__"]
