//! The MMU of one vCPU. Being written.
