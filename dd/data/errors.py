"""The data errors: both are FileNotFoundError, so the command line reports them as a one-line error."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or malformed; the message names the expected path and layout."""


class BadImageError(DatasetNotFoundError):
    """An image file cannot be decoded (truncated, corrupt, not an image); the message names its path and class."""
