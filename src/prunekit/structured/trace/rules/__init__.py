"""The built-in tracing rules, one module per op family; importing the package registers them."""
from prunekit.structured.trace.rules import attention, compute, indexing, norm, reduce, shape  # noqa: F401
