pub mod keygen;
