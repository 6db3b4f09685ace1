//! Core's integration tests, against the real Nix on this machine, in one
//! binary so they are built and linked once. The golden files of the unit
//! tests stay in `tests/data/`.

mod nar_vs_nix;
mod narinfo_vs_nix;
