//! Finding S3 credentials the way the AWS tools (and so Nix) do, in order:
//!
//! 1. `profile=P` in the target URL: only profile `P` of the shared
//!    credentials file, as Nix does (it is an error if it is missing).
//! 2. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//!    `AWS_SESSION_TOKEN`) in the environment.
//! 3. Profile `$AWS_PROFILE`, else `default`, of the shared credentials file
//!    (`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`).
//! 4. What object_store finds by itself: web identity
//!    (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), container
//!    credentials, then the EC2 instance metadata service.
//!
//! object_store does not read the credentials file, so we do, minimally: it
//! is INI with plain `key = value` lines, and we only need three keys of one
//! section. `~/.aws/config`, `credential_process`, SSO and role chaining
//! are not supported; export the resulting keys into the environment
//! instead.

use std::fmt;
use std::path::{Path, PathBuf};

/// Static credentials. `Debug` leaves the secret out, so it cannot end up
/// in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticCredentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the credentials came from, for error messages: which variables or
/// which profile of which file, and the (public) access key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    Environment {
        key_id: String,
        token: bool,
    },
    Profile {
        profile: String,
        file: PathBuf,
        key_id: String,
        /// Why this profile: the URL's `profile=`, `AWS_PROFILE`, or the
        /// default.
        chosen_by: &'static str,
    },
    /// Left to object_store: web identity, container or instance role.
    Ambient,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Environment { key_id, token } => {
                write!(
                    f,
                    "access key {key_id} from the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )?;
                if *token {
                    write!(f, " (with AWS_SESSION_TOKEN)")?;
                }
                Ok(())
            }
            Self::Profile {
                profile,
                file,
                key_id,
                chosen_by,
            } => write!(
                f,
                "access key {key_id} from profile [{profile}] of {} ({chosen_by})",
                file.display()
            ),
            Self::Ambient => write!(
                f,
                "credentials of the machine's role (web identity, container or instance metadata), \
                 since neither AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY nor a credentials-file profile was found"
            ),
        }
    }
}

/// Resolves credentials for an S3 target. `env` reads an environment
/// variable (the process environment outside tests). `None` credentials
/// mean: let object_store find them (step 4).
pub(crate) fn resolve(
    profile: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<StaticCredentials>, CredentialSource), String> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let file = credentials_file(env);
    if let Some(p) = profile {
        let file = file.ok_or_else(|| {
            format!(
                "profile={p} names a profile of the AWS credentials file, but neither \
                 AWS_SHARED_CREDENTIALS_FILE nor HOME is set to find it"
            )
        })?;
        return from_profile(&file, p, "the target URL's profile=")?.ok_or_else(|| {
            format!(
                "{} has no profile [{p}] (profile={p} in the target URL)",
                file.display()
            )
        });
    }
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => {
            let token = var("AWS_SESSION_TOKEN");
            let source = CredentialSource::Environment {
                key_id: key_id.clone(),
                token: token.is_some(),
            };
            let creds = StaticCredentials {
                key_id,
                secret,
                token,
            };
            return Ok((Some(creds), source));
        }
        (Some(_), None) => {
            return Err(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both".into(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both".into(),
            );
        }
        (None, None) => {}
    }
    if let Some(file) = file {
        if let Some(p) = var("AWS_PROFILE") {
            // A profile asked for by name must exist: falling through to
            // other credentials would upload as someone else.
            return from_profile(&file, &p, "AWS_PROFILE")?.ok_or_else(|| {
                format!("{} has no profile [{p}] (AWS_PROFILE={p})", file.display())
            });
        }
        if let Some(found) = from_profile(&file, "default", "the default profile")? {
            return Ok(found);
        }
    }
    Ok((None, CredentialSource::Ambient))
}

fn credentials_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(f) = env("AWS_SHARED_CREDENTIALS_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(f));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".aws/credentials"))
}

/// Static credentials from `[profile]` of `file`; `None` when the file or
/// the section does not exist.
fn from_profile(
    file: &Path,
    profile: &str,
    chosen_by: &'static str,
) -> Result<Option<(Option<StaticCredentials>, CredentialSource)>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let Some(section) = ini_section(&text, profile) else {
        return Ok(None);
    };
    let get = |key: &str| {
        section
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let missing = |key: &str| {
        format!(
            "profile [{profile}] of {} has no {key} (only static keys are read from it; \
             for SSO, role_arn or credential_process, export the resulting keys as AWS_* variables)",
            file.display()
        )
    };
    let key_id = get("aws_access_key_id").ok_or_else(|| missing("aws_access_key_id"))?;
    let secret = get("aws_secret_access_key").ok_or_else(|| missing("aws_secret_access_key"))?;
    let source = CredentialSource::Profile {
        profile: profile.to_owned(),
        file: file.to_owned(),
        key_id: key_id.clone(),
        chosen_by,
    };
    let creds = StaticCredentials {
        key_id,
        secret,
        token: get("aws_session_token"),
    };
    Ok(Some((Some(creds), source)))
}

/// The `key = value` pairs of section `[name]` (the first one, if repeated).
/// Comments start with `#` or `;`; blanks around names and values are
/// ignored. `None` when there is no such section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found: Option<Vec<(String, String)>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            if header.trim() == name {
                found = Some(Vec::new());
            }
            continue;
        }
        if let (Some(pairs), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const FILE: &str = "# comment\n[default]\naws_access_key_id = DEFKEY\naws_secret_access_key=defsecret\n\n\
        [ci]\n; another comment\nAWS_ACCESS_KEY_ID = CIKEY \naws_secret_access_key = ci=secret\naws_session_token = tok\n\
        [broken]\naws_access_key_id = X\n";

    fn with_file() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(&f, FILE).unwrap();
        let f = f.display().to_string();
        (dir, f)
    }

    #[test]
    fn order_of_the_chain() {
        let (_dir, f) = with_file();
        let file = ("AWS_SHARED_CREDENTIALS_FILE", f.clone());
        let env_keys = [
            ("AWS_ACCESS_KEY_ID", "ENVKEY".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "envsecret".to_owned()),
        ];

        // The URL's profile beats the environment.
        let all = env_of(&[file.clone(), env_keys[0].clone(), env_keys[1].clone()]);
        let (c, src) = resolve(Some("ci"), &all).unwrap();
        let c = c.unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret.as_str()),
            ("CIKEY", "ci=secret")
        );
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert!(src.to_string().contains("[ci]") && src.to_string().contains(&f));

        // Then the environment, then AWS_PROFILE, then [default].
        let (c, src) = resolve(None, &all).unwrap();
        assert_eq!(c.unwrap().key_id, "ENVKEY");
        let msg = src.to_string();
        assert!(
            msg.contains("AWS_SECRET_ACCESS_KEY") && !msg.contains("envsecret"),
            "{msg}"
        );
        let (c, _) = resolve(None, &env_of(&[file.clone(), ("AWS_PROFILE", "ci".into())])).unwrap();
        assert_eq!(c.unwrap().key_id, "CIKEY");
        let (c, src) = resolve(None, &env_of(std::slice::from_ref(&file))).unwrap();
        assert_eq!(c.unwrap().secret, "defsecret");
        assert!(src.to_string().contains("default profile"));

        // Nothing at all: left to the machine's role.
        let (c, src) = resolve(None, &env_of(&[("HOME", "/nonexistent".into())])).unwrap();
        assert!(c.is_none());
        assert_eq!(src, CredentialSource::Ambient);
    }

    #[test]
    fn errors_name_what_is_missing_and_never_the_secret() {
        let (_dir, f) = with_file();
        let file = ("AWS_SHARED_CREDENTIALS_FILE", f.clone());
        let e = resolve(Some("nope"), &env_of(std::slice::from_ref(&file))).unwrap_err();
        assert!(e.contains("[nope]") && e.contains(&f), "{e}");
        let e = resolve(Some("broken"), &env_of(std::slice::from_ref(&file))).unwrap_err();
        assert!(e.contains("aws_secret_access_key"), "{e}");
        let e = resolve(
            None,
            &env_of(&[file.clone(), ("AWS_PROFILE", "gone".into())]),
        )
        .unwrap_err();
        assert!(e.contains("AWS_PROFILE=gone"), "{e}");
        let e = resolve(None, &env_of(&[("AWS_SECRET_ACCESS_KEY", "s3cr3t".into())])).unwrap_err();
        assert!(
            e.contains("AWS_ACCESS_KEY_ID is not") && !e.contains("s3cr3t"),
            "{e}"
        );
        let e = resolve(Some("ci"), &env_of(&[])).unwrap_err();
        assert!(e.contains("HOME"), "{e}");
        let creds = StaticCredentials {
            key_id: "K".into(),
            secret: "s3cr3t".into(),
            token: Some("t0k3n".into()),
        };
        let dbg = format!("{creds:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k3n"), "{dbg}");
    }
}
