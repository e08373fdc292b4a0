"""The one exception root of the simulator and its hardware-rule subclasses.

Every broken rule names the rule, the numbers involved and what to do about it,
so the message can be shown to a person or fed back to an LLM as is.
"""


class HwError(Exception):
    """A kernel broke a rule of the simulated machine (or asked for something it lacks)."""

    rule = "hardware rule"


class CapacityError(HwError):
    rule = "capacity"


class PathError(HwError):
    rule = "data path"


class AlignmentError(HwError):
    rule = "alignment"


class DtypeError(HwError):
    rule = "dtype"


class ShapeError(HwError):
    rule = "shape"


class BoundsError(HwError):
    """Out-of-range index or slice on a tensor or buffer."""

    rule = "index"


class SpecError(HwError):
    """A machine description (TOML preset or user file) is invalid."""

    rule = "machine spec"


class BudgetError(HwError):
    """The trace would take the trusted simulator more work than its budget allows."""

    rule = "trusted budget"


class ParamError(HwError):
    """An op parameter or a name outside what the DSL accepts."""

    rule = "parameters"


class LimitError(HwError):
    """More ops than hwmodel.limits allows a kernel."""

    rule = "op limit"
