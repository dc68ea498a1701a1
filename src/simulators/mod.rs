//! Simulators of third-party services, following their public APIs.
pub mod confluence;
pub mod files;
pub mod gdrive;
mod http;
mod seed;
pub mod traffic;
