"""The weight-scheme names a model recipe accepts: int4 group schemes (W4A16 layers) and BCQ schemes."""
from ..errors import QuantizationError
from ..quant import SCHEMES, BCQScheme
from ..quant.bcq import BCQ_BITS
from ..quant.scheme import ALLOWED_GROUP_SIZES

#: BCQ schemes by name (``"bcq3-g128"``; ``-pc`` per row), all with per-group offsets.
BCQ_SCHEMES = {scheme.name: scheme for scheme in (BCQScheme(bits, group) for bits in BCQ_BITS
                                                  for group in ALLOWED_GROUP_SIZES)}


def weight_scheme(name: str):
    """The scheme object of a recipe's scheme name.

    Parameters
    ----------
    name : str
        An int4 scheme (``"w4a16-g128"``, see ``lowbit_tvm.quant.SCHEMES``) or a BCQ scheme (``"bcq3-g128"``).

    Returns
    -------
    Int4Scheme or BCQScheme

    Raises
    ------
    QuantizationError
        If the name is neither; the message lists the known names.
    """
    if name in SCHEMES:
        return SCHEMES[name]
    if name in BCQ_SCHEMES:
        return BCQ_SCHEMES[name]
    raise QuantizationError(f"unknown weight scheme {name!r}; known: {sorted(SCHEMES) + sorted(BCQ_SCHEMES)}")
