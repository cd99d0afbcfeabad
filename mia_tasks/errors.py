"""One exception type for bad user input: the CLI prints its message as one line and exits non-zero."""


class LayerleakError(Exception):
    """A problem with the user's input (config, data, checkpoint, run folder) that they can fix."""
