"""The weight-scheme names a model recipe accepts: int4 group schemes (W4A16 layers), BCQ schemes and Atom-style
W4A8 / W8A8 schemes."""
import re

from ..errors import QuantizationError
from ..quant import SCHEMES, BCQScheme
from ..quant.atom import AtomScheme
from ..quant.bcq import BCQ_BITS
from ..quant.scheme import ALLOWED_GROUP_SIZES

#: BCQ schemes by name (``"bcq3-g128"``; ``-pc`` per row), all with per-group offsets.
BCQ_SCHEMES = {scheme.name: scheme for scheme in (BCQScheme(bits, group) for bits in BCQ_BITS
                                                  for group in ALLOWED_GROUP_SIZES)}
#: Atom-style names: ``w4a8-o128`` (int4 weights in groups of 128, 128 int8 outlier channels; also spelled
#: ``w4a8-g128-o128``, ``AtomScheme.name``), ``w8a8`` / ``w8a8-o32`` (int8 weights per output channel).
ATOM_NAME = re.compile(r"^w(?P<bits>[48])a8(?P<group>-g128)?(-o(?P<outliers>\d+))?$")


def weight_scheme(name: str):
    """The scheme object of a recipe's scheme name.

    Parameters
    ----------
    name : str
        An int4 scheme (``"w4a16-g128"``, see ``lowbit_tvm.quant.SCHEMES``), a BCQ scheme (``"bcq3-g128"``) or an
        Atom-style scheme (``"w4a8-o128"``, ``"w4a8-o0"``, ``"w8a8"``: ``ATOM_NAME``).

    Returns
    -------
    Int4Scheme, BCQScheme or AtomScheme

    Raises
    ------
    QuantizationError
        If the name is none of these (the message lists the known names), or an Atom-style outlier count is not
        a multiple of 32.
    """
    if name in SCHEMES:
        return SCHEMES[name]
    if name in BCQ_SCHEMES:
        return BCQ_SCHEMES[name]
    match = ATOM_NAME.match(name)
    if match and not (match["bits"] == "8" and match["group"]):
        bits, outliers = int(match["bits"]), int(match["outliers"] or 0)
        return AtomScheme(bits, 128 if bits == 4 else None, outliers)
    raise QuantizationError(f"unknown weight scheme {name!r}; known: {sorted(SCHEMES) + sorted(BCQ_SCHEMES)}, "
                            "and Atom-style w4a8-o<N> (int4 weights, group 128, N int8 outlier channels, N a "
                            "multiple of 32) or w8a8[-o<N>]")
