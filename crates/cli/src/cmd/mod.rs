pub mod check_config;
pub mod copy;
pub mod daemon;
pub mod keygen;
pub mod push;
pub mod retry;
pub mod status;
pub mod wait;
