"""Error kinds shared by the model, the drivers and the API (mapped to HTTP status)."""


class CnetError(Exception):
    status = 500


class InvalidParameter(CnetError):
    status = 400


class FeatureMissing(InvalidParameter):
    """A kernel feature this machine lacks; the message names it."""


class NotFound(CnetError):
    status = 404


class Conflict(CnetError):
    status = 409
