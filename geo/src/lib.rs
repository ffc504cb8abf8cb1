#![doc = include_str!("../README.md")]
// One `unsafe` call, reviewed: the read-only memory map of the database file (`db::map`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod country;
mod db;
mod error;
mod info;
mod record;
mod reserved;

pub use country::CountryCode;
pub use db::GeoDb;
pub use error::GeoError;
pub use info::DbInfo;
