"""freshrec: real-time recommendation with collisionless embedding tables.

A rebuild of ByteDance's Monolith design (arXiv 2209.07663) on PyTorch and the Python data
ecosystem. The public surface is the handful of names below; everything else lives in the
package folders (``table``, ``ps``, ``features``, ``models``, ``train``, ``stream``, ``joiner``,
``sync``, ``serve``, ``online``, ``sim``, ``data``, ``demo``, ``experiments``, ``bench``), each of
which opens with a docstring saying what it owns.
"""

from __future__ import annotations

from freshrec.errors import FreshrecError

__version__ = "0.1.0"

__all__ = ["FreshrecError", "__version__"]
