"""Errors a user can act on; each message says what to do."""


class DeltaPatchError(Exception):
    """Base of deltapatch's own errors."""


class BackboneError(DeltaPatchError):
    """A backbone cannot be built or its weights cannot be loaded."""


class SpecError(DeltaPatchError):
    """A stage spec does not describe its backbone: the spec path differs from ``backbone(x)``."""


class PatchError(DeltaPatchError):
    """A patch is unknown, malformed, or made for another backbone."""


class DataError(DeltaPatchError):
    """A data set is missing, empty, unreadable or mislabelled."""
