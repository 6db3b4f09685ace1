pub mod check_config;
pub mod daemon;
pub mod keygen;
pub mod push;
pub mod status;
pub mod wait;
