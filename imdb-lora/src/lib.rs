//! The library half of `imdb-lora`: what its commands share with the tests (the models the
//! tools run on, and the kernel parity check). The stages themselves are their own crates.

pub mod kernel_parity;
pub mod models;
