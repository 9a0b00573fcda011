//! RISC-V Sv39/Sv48/Sv57 paging. Being written.

/// RISC-V paging (placeholder type until the port lands).
#[derive(Debug)]
pub struct RiscV;
