"""The pure-Python paging layer the Rust core replaced: formats, walks and PageTable (the specification)."""
