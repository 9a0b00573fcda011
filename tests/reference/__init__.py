"""The pure-Python implementations the Rust core replaced: the executable specification.

Differential tests drive these and the product side by side. The product
never imports this package; it may import product value types and configs
(``vmopt.errors``, ``vmopt.units``, ``vmopt.numa.config``...), never product
classes that wrap the core.
"""
