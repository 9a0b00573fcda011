//! x86-64 4-level and 5-level paging (Intel SDM Vol. 3A, 4.5). Being written.

/// x86-64 paging (placeholder type until the port lands).
#[derive(Debug)]
pub struct X86_64;
