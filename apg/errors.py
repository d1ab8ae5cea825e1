"""The errors apg raises on purpose: a front end catches `ApgError` (and nothing broader) to tell the user's
mistake from a bug.

    ApgError                                  every refusal apg makes on purpose
    ├── InputError(ApgError, ValueError)      a value out of range, malformed, unknown or inconsistent
    │   └── CommandError(InputError)          a command-line option a front end refuses (names the option)
    ├── InputTypeError(ApgError, TypeError)   a value of the wrong type
    ├── UnsupportedError(ApgError, ValueError)  a pipeline, scheduler or call argument apg cannot guide
    ├── ResourceError(ApgError, OSError)      a file, folder or data set that cannot be read, fetched or written
    ├── ModelLoadError(ApgError, RuntimeError)  a model that cannot be loaded here (apg.runtime.load_pipeline)
    └── FeatureWeightsError(ApgError, RuntimeError)  feature-extractor weights neither given nor downloadable

Each class also derives from the built-in exception the library raised before it existed, so code (and
tests) that catch ValueError, TypeError, OSError or RuntimeError keep working. Messages are one line that
names the argument and the value. An exception that is not an ApgError is a bug (in apg or below it): the
command-line tools print it as such (exit code 1) and `--traceback` prints the whole traceback.
"""

from __future__ import annotations

__all__ = ["ApgError", "InputError", "CommandError", "InputTypeError", "UnsupportedError", "ResourceError",
           "ModelLoadError", "FeatureWeightsError"]


class ApgError(Exception):
    """Base of every error apg raises on purpose; its message is one line meant for the user."""


class InputError(ApgError, ValueError):
    """A value the caller gave is out of range, malformed, unknown or inconsistent with another one."""


class CommandError(InputError):
    """A command-line value a front end refuses: printed as `<prog>: error: <message>`, exit code 2."""


class InputTypeError(ApgError, TypeError):
    """A value of the wrong type (a string where a number belongs, a float where an integer does)."""


class UnsupportedError(ApgError, ValueError):
    """A pipeline, scheduler or call argument that apg cannot guide (valid input, unsupported combination)."""


class ResourceError(ApgError, OSError):
    """A file, folder, model or data set that cannot be read, downloaded or written."""


class ModelLoadError(ApgError, RuntimeError):
    """A model that cannot be loaded here; the message names it and says what to do."""


class FeatureWeightsError(ApgError, RuntimeError):
    """The feature extractor's weights are neither given nor downloadable, or the given file does not load."""
