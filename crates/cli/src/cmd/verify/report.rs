//! What `nix-outbox verify` prints: one line per problem and a summary for
//! people, or one JSON document with `--json`.

use std::io::Write;

use super::check::Problem;

/// A path that could not be checked: the cache could not be read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReadError {
    pub path: String,
    pub message: String,
}

/// Everything a run found, ready to print.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub cache: String,
    pub store_dir: String,
    /// Narinfos looked at (present or not).
    pub checked: usize,
    pub problems: Vec<Problem>,
    pub errors: Vec<ReadError>,
    /// Remarks that are not problems (e.g. no nix-cache-info).
    pub notes: Vec<String>,
}

impl Report {
    /// 0: clean; 1: problems in the cache; 2: parts of it could not be read.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.problems.is_empty() {
            1
        } else {
            0
        }
    }

    pub fn sort(&mut self) {
        self.problems
            .sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
        self.problems.dedup();
        self.errors.sort_by(|a, b| a.path.cmp(&b.path));
    }

    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        for p in &self.problems {
            writeln!(out, "{}: {}", p.path, p.message)?;
        }
        for e in &self.errors {
            writeln!(out, "{}: could not be checked: {}", e.path, e.message)?;
        }
        let mut summary = format!(
            "{}: {} path(s) checked, {} problem(s)",
            self.cache,
            self.checked,
            self.problems.len()
        );
        if !self.errors.is_empty() {
            summary.push_str(&format!(
                ", {} path(s) could not be read (connection or I/O errors: the check is incomplete)",
                self.errors.len()
            ));
        }
        writeln!(out, "{summary}")
    }

    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_summary() {
        let mut r = Report {
            cache: "file:///c".to_owned(),
            store_dir: "/nix/store".to_owned(),
            checked: 3,
            problems: vec![],
            errors: vec![],
            notes: vec![],
        };
        assert_eq!(r.exit_code(), 0);
        r.problems.push(Problem {
            path: "/nix/store/x".to_owned(),
            kind: "file-size",
            message: "NAR file truncated".to_owned(),
        });
        assert_eq!(r.exit_code(), 1);
        let mut text = Vec::new();
        r.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "/nix/store/x: NAR file truncated\nfile:///c: 3 path(s) checked, 1 problem(s)\n"
        );
        r.errors.push(ReadError {
            path: "y".to_owned(),
            message: "reset".to_owned(),
        });
        assert_eq!(r.exit_code(), 2);
        let mut json = Vec::new();
        r.write_json(&mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["problems"][0]["kind"], "file-size");
        assert_eq!(v["errors"][0]["path"], "y");
    }
}
