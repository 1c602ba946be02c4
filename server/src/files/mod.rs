//! Reading the watched files and keeping the last good version of each.

pub mod atomic;
pub mod key_table;
pub mod last_used;
pub mod reload;
