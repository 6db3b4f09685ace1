//! A target URL written back in its one canonical form.

use std::fmt;

use super::{Addressing, TargetConfig, TargetUrlError, parse};
use crate::compress::Compression;

/// The canonical URL: normalised location, then only the parameters that
/// differ from the defaults, in a fixed order. Parsing it gives back an
/// equal value.
impl fmt::Display for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location.to_string();
        f.write_str(&location)?;
        let mut params = Vec::new();
        if self.compression != Compression::default() {
            params.push(format!("compression={}", self.compression.nix_name()));
        }
        if let Some(level) = self.compression_level {
            params.push(format!("compression-level={level}"));
        }
        if let Some(p) = self.parallel_compression {
            params.push(format!("parallel-compression={p}"));
        }
        if self.write_nar_listing {
            params.push("write-nar-listing=true".to_owned());
        }
        if !self.multipart_upload {
            params.push("multipart-upload=false".to_owned());
        }
        if let Some(n) = self.multipart_chunk_size {
            params.push(format!("multipart-chunk-size={n}"));
        }
        if let Some(n) = self.max_connections {
            params.push(format!("max-connections={n}"));
        }
        if self.addressing != Addressing::Auto {
            params.push(format!("addressing-style={}", self.addressing));
        }
        if let Some(c) = &self.storage_class {
            params.push(format!("storage-class={c}"));
        }
        if let Some(n) = self.multipart_threshold {
            params.push(format!("multipart-threshold={n}"));
        }
        if !params.is_empty() {
            // The location may already carry S3 parameters.
            let sep = if location.contains('?') { '&' } else { '?' };
            write!(f, "{sep}{}", params.join("&"))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TargetConfig {
    type Err = TargetUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}
