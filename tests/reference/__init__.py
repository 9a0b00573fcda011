"""The pure-Python implementation vmopt had before its Rust core: the executable specification.

The product never imports this package; differential tests drive it and the
core side by side. It may import product value types and configs only.
"""
