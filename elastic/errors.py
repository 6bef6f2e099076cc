"""Typed errors raised by elastic.

Every failure a caller can act on has its own class, all under `ElasticError`, so a serving
app can catch exactly what it handles and let the rest propagate.
"""

from __future__ import annotations


class ElasticError(Exception):
    """Base class of every error elastic raises on purpose."""


class InvalidInput(ElasticError, ValueError):
    """An input tensor has the wrong shape, dtype or non-finite values."""


class UnknownSubnet(ElasticError, KeyError):
    """A subnet id or `Subnet` that the model does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown subnet"


class CheckpointError(ElasticError):
    """A checkpoint directory is missing, truncated, corrupt or for another builder."""


class ExportError(CheckpointError):
    """An ONNX export is missing, corrupt, tampered with, of another model, or lacks a subnet."""


class UnsupportedArchitecture(ElasticError, TypeError):
    """A timm model whose family has no anchor adapter, or a family that mixes architectures."""


class DataError(ElasticError):
    """A data set is missing or corrupt."""


class BudgetInfeasible(ElasticError):
    """A request's latency budget cannot be met even by the fastest eligible subnet."""


class Overloaded(ElasticError):
    """The runtime cannot take or keep a request: queue full, shed under load, or closed."""


class ExecutionError(ElasticError):
    """A batch's forward pass failed; the original exception is attached as `__cause__`."""


class StreamError(ElasticError):
    """A stream that is unknown or closed, or stream states stepped in a way their phases do not allow."""


class ConfigError(ElasticError, ValueError):
    """A setting cannot be used: a bad constructor argument, or a resource it names (a
    metrics port) is not available."""


class ReentrantCall(ElasticError, RuntimeError):
    """A blocking call into a runtime from one of its own threads (e.g. `infer` inside a
    result callback), which would wait for itself forever."""
