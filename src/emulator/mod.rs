//! (being written)
pub mod template;
