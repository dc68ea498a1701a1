//! Simulators of third-party services, following their public APIs.
pub mod confluence;
pub mod gdrive;
pub mod traffic;
