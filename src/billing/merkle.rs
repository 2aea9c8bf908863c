//! Merkle sum trees: the client crate's (so that a customer verifies with
//! the code that built the statement), tested here against RFC 6962.

pub use keymeter_client::merkle::*;

#[cfg(test)]
mod tests;
