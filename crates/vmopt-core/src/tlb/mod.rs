//! TLB arrays and levels, the page-walk cache and prefetchers. Being written.
