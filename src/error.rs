//! (being written)
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {}
pub type Result<T, E = Error> = std::result::Result<T, E>;
