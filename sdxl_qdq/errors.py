"""The project's exceptions: one base class, a few subclasses. Messages name the value and the fix."""


class QuantError(Exception):
    """Base class of every error this project raises on purpose."""


class ModelNotAvailableError(QuantError):
    """A model source cannot be loaded (weights absent, network off)."""


class ConfigError(QuantError):
    """A user-supplied option, recipe or data file is invalid."""


class ExecutionProviderError(QuantError):
    """An execution provider is missing, or a session did not run where it claims to."""


class BuildError(QuantError):
    """A build stage (export, calibration, Olive workflow) failed."""


class IntegrityError(QuantError):
    """A file that a manifest lists is missing, or its size or digest is not the recorded one."""
