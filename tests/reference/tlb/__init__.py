"""Reference TLB arrays, page-walk cache, prefetchers and MMU (pure Python)."""
