//! Store access for nix-outbox: our own client for the nix-daemon worker
//! protocol (Nix 2.8 through current, and Lix), a connection pool, closures
//! in upload order, and the outputs of a finished build.
//!
//! We speak the protocol instead of linking Nix's C++ (which breaks with
//! every Nix release), parsing `nix path-info --json` (whose shape changed
//! in 2.19, 2.23 and 2.33) or reading Nix's SQLite database (private, WAL,
//! not readable by non-root users).

mod address;
mod closure;
mod error;
pub mod nix_db;
mod ops;
mod outputs;
mod pool;
pub mod protocol;
mod realisation;
mod signatures;
pub mod wire;

pub use address::{DEFAULT_SOCKET, StoreAddress};
pub use closure::{Closure, closure};
pub use error::{ProtocolError, StoreError};
pub use ops::{PathInfo, RawPathInfo, read_path_info};
pub use outputs::{BuildOutputs, build_outputs, outputs_from_drv_file, outputs_of};
pub use pool::{PooledConnection, StorePool};
pub use protocol::Connection;
pub use realisation::{
    BuildTrace, OP_QUERY_REALISATION, ca_realisation_ids, ca_realisation_ids_of, floating_outputs,
    is_valid_drv_output_id, is_valid_output_name, read_derivation,
};
pub use signatures::sign_local_paths;
