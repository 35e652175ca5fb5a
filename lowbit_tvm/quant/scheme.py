"""Int4 weight-only quantization schemes and the scheme registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import QuantizationError

#: Group sizes along K; -1 means per-channel (one group spanning all of K).
ALLOWED_GROUP_SIZES = (32, 64, 128, -1)
#: Bit widths supported by the packed layout.
ALLOWED_BITS = (4,)
PER_CHANNEL = -1


class GroupedScheme:
    """What every scheme that groups weights along K shares: group counts and the JSON record.

    Subclasses are frozen dataclasses with a ``group_size`` field (``-1`` = one group spanning K) and a
    ``name`` property; ``_JSON_KIND`` prefixes their JSON error messages.
    """

    _JSON_KIND = ""

    def padded_k(self, k: int) -> int:
        """``k`` rounded up to whole groups and to 32 (a packed word, and what the kernels read per step): the
        K that the model layers zero-pad their weights to.

        Parameters
        ----------
        k : int
            Reduction (input-feature) dimension of the weight.

        Returns
        -------
        int
        """
        step = 32 if self.group_size == PER_CHANNEL else max(32, self.group_size)
        return -(-int(k) // step) * step

    def group_len(self, k: int) -> int:
        """Group size actually used for a reduction length ``k``.

        Parameters
        ----------
        k : int
            Reduction (input-feature) dimension of the weight.

        Returns
        -------
        int
            ``k`` when one group spans K, else ``group_size``.

        Raises
        ------
        QuantizationError
            If ``k`` is not a positive integer or not divisible by the group size.
        """
        self.groups(k)
        return int(k) if self.group_size == PER_CHANNEL else self.group_size

    def groups(self, k: int) -> int:
        """Number of quantization groups along K.

        Parameters
        ----------
        k : int
            Reduction (input-feature) dimension of the weight.

        Returns
        -------
        int
            ``k // group_size`` (1 when one group spans K).

        Raises
        ------
        QuantizationError
            If ``k`` is not a positive integer or not divisible by the group size.
        """
        if not _is_int(k) or k <= 0:
            raise QuantizationError(f"K must be a positive integer, got {k!r}")
        if self.group_size == PER_CHANNEL:
            return 1
        if k % self.group_size != 0:
            raise QuantizationError(
                f"K={k} is not divisible by the group size {self.group_size} of "
                f"scheme {self.name!r}; pick a group size dividing K "
                f"(one of {list(ALLOWED_GROUP_SIZES)}) or pad K with zeros to a "
                f"multiple of {self.group_size}"
            )
        return int(k) // self.group_size

    def to_json(self) -> dict:
        """Serialise to a JSON-compatible dict: ``name`` plus every field."""
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict):
        """Build a scheme from the output of :meth:`to_json`.

        Parameters
        ----------
        d : dict
            Must hold every field; ``name`` is optional and, if present, must match the rebuilt scheme.

        Raises
        ------
        QuantizationError
            On missing or unknown keys, invalid values or a mismatching name.
        """
        if not isinstance(d, dict):
            raise QuantizationError(f"expected a dict, got {type(d).__name__}")
        required = {field.name for field in fields(cls)}
        missing = required - d.keys()
        unknown = d.keys() - required - {"name"}
        kind = cls._JSON_KIND
        if missing or unknown:
            raise QuantizationError(
                f"bad {kind}scheme JSON: missing keys {sorted(missing)}, unknown keys "
                f"{sorted(unknown)}; expected {sorted(required)} and optional 'name'"
            )
        scheme = cls(**{key: d[key] for key in required})
        if "name" in d and d["name"] != scheme.name:
            raise QuantizationError(
                f"{kind}scheme JSON name {d['name']!r} does not match its fields "
                f"(which describe {scheme.name!r})"
            )
        return scheme


@dataclass(frozen=True)
class Int4Scheme(GroupedScheme):
    """Weight-only int4 group quantization along K (W4A16).

    Parameters
    ----------
    group_size : int
        Number of consecutive K elements sharing one scale (and zero point):
        32, 64 or 128, or -1 for per-channel (one group spanning all of K).
    symmetric : bool
        If True, codes are centred at 8 and no zero points are stored.
        If False, an integer zero point (0..15) is stored per group.
    bits : int
        Bits per weight; only 4 is supported.

    Raises
    ------
    QuantizationError
        If ``group_size``, ``symmetric`` or ``bits`` is not an allowed value.
    """

    group_size: int = 128
    symmetric: bool = True
    bits: int = 4

    def __post_init__(self) -> None:
        if not _is_int(self.group_size) or self.group_size not in ALLOWED_GROUP_SIZES:
            raise QuantizationError(
                f"invalid group_size {self.group_size!r}; allowed values are "
                f"{list(ALLOWED_GROUP_SIZES)} (-1 means per-channel)"
            )
        if not _is_int(self.bits) or self.bits not in ALLOWED_BITS:
            raise QuantizationError(
                f"invalid bits {self.bits!r}; allowed values are {list(ALLOWED_BITS)}"
            )
        if not isinstance(self.symmetric, bool):
            raise QuantizationError(
                f"invalid symmetric {self.symmetric!r}; expected True or False"
            )

    @property
    def is_per_channel(self) -> bool:
        """bool: True if one group spans the whole K dimension."""
        return self.group_size == PER_CHANNEL

    @property
    def name(self) -> str:
        """str: Canonical name, e.g. ``"w4a16-g128"`` or ``"w4a16-pc-asym"``."""
        if self.is_per_channel:
            base = f"w{self.bits}a16-pc"
        else:
            base = f"w{self.bits}a16-g{self.group_size}"
        if self.symmetric:
            return base
        return base + "-asym"


def _is_int(value) -> bool:
    """Return True for real integers (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _default_schemes() -> dict:
    """Build every supported group size x symmetry combination, keyed by name."""
    schemes = {}
    for group_size in ALLOWED_GROUP_SIZES:
        for symmetric in (True, False):
            scheme = Int4Scheme(group_size=group_size, symmetric=symmetric)
            schemes[scheme.name] = scheme
    return schemes


#: Registry of known schemes, keyed by :attr:`Int4Scheme.name`.
SCHEMES: dict = _default_schemes()


def get_scheme(name: str) -> Int4Scheme:
    """Look up a registered scheme by name.

    Parameters
    ----------
    name : str
        A scheme name such as ``"w4a16-g128"``.

    Returns
    -------
    Int4Scheme
        The registered scheme.

    Raises
    ------
    QuantizationError
        If ``name`` is not registered; the message lists the known names.
    """
    if name not in SCHEMES:
        raise QuantizationError(
            f"unknown quantization scheme {name!r}; known schemes: {sorted(SCHEMES)}"
        )
    return SCHEMES[name]


def register_scheme(scheme: Int4Scheme) -> Int4Scheme:
    """Add a scheme to :data:`SCHEMES` under its name.

    Registering a scheme equal to an existing entry is a no-op.

    Parameters
    ----------
    scheme : Int4Scheme
        The scheme to register.

    Returns
    -------
    Int4Scheme
        The registered scheme (the existing entry if an equal one was
        already registered).

    Raises
    ------
    QuantizationError
        If ``scheme`` is not an :class:`Int4Scheme`, or a different scheme is
        already registered under the same name.
    """
    if not isinstance(scheme, Int4Scheme):
        raise QuantizationError(
            f"expected an Int4Scheme, got {type(scheme).__name__}"
        )
    existing = SCHEMES.get(scheme.name)
    if existing is None:
        SCHEMES[scheme.name] = scheme
        return scheme
    if existing != scheme:
        raise QuantizationError(
            f"a different scheme is already registered as {scheme.name!r}: "
            f"{existing!r}; refusing to overwrite it with {scheme!r}"
        )
    return existing
