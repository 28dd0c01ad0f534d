//! The library half of `imdb-lora`: what its commands share with the tests (the models the
//! tools run on, the kernel parity check, and `status`'s view of every stage). The stages
//! themselves are their own crates.

pub mod exp;
pub mod kernel_parity;
pub mod models;
pub mod status;
