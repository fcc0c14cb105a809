//! Named farms saved by `kiln login`: `<config dir>/kiln/profiles.json`
//! (e.g. ~/.config/kiln), readable by its owner only since it holds tokens.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// The profile `kiln login` saves and commands fall back to without
/// `--profile` when no `kiln dev` farm is near.
pub const DEFAULT_PROFILE: &str = "default";
const FILE: &str = "profiles.json";

/// One farm: where it is and how to sign in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub gateway: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profiles {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Where the profiles are kept.
pub fn path() -> Result<PathBuf, CliError> {
    let dir = dirs::config_dir().ok_or(CliError::NoConfigDir)?;
    Ok(dir.join("kiln").join(FILE))
}

/// The saved profiles; none when the file does not exist yet.
pub fn load(path: &Path) -> Result<Profiles, CliError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Profiles::default()),
        Err(err) => return Err(CliError::io(path)(err)),
    };
    serde_json::from_slice(&bytes).map_err(|err| CliError::Profiles {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

/// Writes the profiles with mode 0600, replacing the file whole so that a
/// crash never leaves half a file.
pub fn save(path: &Path, profiles: &Profiles) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(CliError::io(dir))?;
    let json = serde_json::to_vec_pretty(profiles).map_err(|err| CliError::Profiles {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let partial = path.with_extension("json.partial");
    let mut file = private_file(&partial)?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(CliError::io(&partial))?;
    std::fs::rename(&partial, path).map_err(CliError::io(path))
}

/// Creates (or empties) `path` readable by its owner only, from creation
/// on: for files that hold tokens or passwords.
#[cfg(unix)]
pub(crate) fn private_file(path: &Path) -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(CliError::io(path))?;
    // A file left by an earlier run keeps its mode on open: set it anyway.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(CliError::io(path))?;
    Ok(file)
}

#[cfg(not(unix))]
pub(crate) fn private_file(path: &Path) -> Result<std::fs::File, CliError> {
    std::fs::File::create(path).map_err(CliError::io(path))
}

/// Where a command's farm comes from when its flags do not say it all.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// `--profile NAME` (or KILN_PROFILE).
    Named(String, Profile),
    /// The farm `kiln dev` runs in this directory or a parent.
    Dev(crate::connect::DevInfo),
    /// The profile `kiln login` saves without `--profile`.
    Default(Profile),
    Nothing,
}

/// Chooses the fallback, in order: the named profile (which must exist),
/// a `kiln dev` farm nearby, the default profile.
pub fn fallback(
    named: Option<&str>,
    profiles: &Profiles,
    dev: Option<crate::connect::DevInfo>,
) -> Result<Fallback, CliError> {
    if let Some(name) = named.map(str::trim).filter(|n| !n.is_empty()) {
        return match profiles.profiles.get(name) {
            Some(profile) => Ok(Fallback::Named(name.to_owned(), profile.clone())),
            None => Err(CliError::NoProfile(name.to_owned())),
        };
    }
    if let Some(dev) = dev {
        return Ok(Fallback::Dev(dev));
    }
    Ok(match profiles.profiles.get(DEFAULT_PROFILE) {
        Some(profile) => Fallback::Default(profile.clone()),
        None => Fallback::Nothing,
    })
}

impl Fallback {
    pub fn gateway(&self) -> Option<&str> {
        match self {
            Self::Named(_, p) | Self::Default(p) => Some(p.gateway.as_str()),
            Self::Dev(dev) => Some(dev.gateway_grpc.as_str()),
            Self::Nothing => None,
        }
        .filter(|g| !g.trim().is_empty())
    }

    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Named(_, p) | Self::Default(p) => Some(p.token.as_str()),
            Self::Dev(dev) => Some(dev.token.as_str()),
            Self::Nothing => None,
        }
        .filter(|t| !t.trim().is_empty())
    }

    pub fn ca(&self) -> Option<&Path> {
        match self {
            Self::Named(_, p) | Self::Default(p) => p.ca.as_deref(),
            Self::Dev(dev) => dev.ca.as_deref(),
            Self::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::DevInfo;

    fn profile(gateway: &str, token: &str) -> Profile {
        Profile {
            gateway: gateway.to_owned(),
            token: token.to_owned(),
            ca: None,
        }
    }

    fn dev() -> DevInfo {
        DevInfo {
            gateway_grpc: "http://127.0.0.1:7070".to_owned(),
            gateway_http: String::new(),
            gateways_http: Vec::new(),
            etcd: String::new(),
            etcd_user: String::new(),
            etcd_password: String::new(),
            database: String::new(),
            logs: PathBuf::new(),
            token: "dev-token".to_owned(),
            ca: None,
        }
    }

    fn saved() -> Profiles {
        let mut profiles = Profiles::default();
        profiles
            .profiles
            .insert("studio".to_owned(), profile("https://farm:7070", "s3cret"));
        profiles.profiles.insert(
            DEFAULT_PROFILE.to_owned(),
            profile("http://home:7070", "home"),
        );
        profiles
    }

    #[test]
    fn a_named_profile_wins_over_the_dev_farm() {
        let chosen = fallback(Some("studio"), &saved(), Some(dev())).expect("profile");
        assert_eq!(chosen.gateway(), Some("https://farm:7070"));
        assert_eq!(chosen.token(), Some("s3cret"));
    }

    #[test]
    fn the_dev_farm_wins_over_the_default_profile() {
        let chosen = fallback(None, &saved(), Some(dev())).expect("dev");
        assert_eq!(chosen.gateway(), Some("http://127.0.0.1:7070"));
        assert_eq!(chosen.token(), Some("dev-token"));
        let chosen = fallback(None, &saved(), None).expect("default");
        assert_eq!(chosen.gateway(), Some("http://home:7070"));
        assert_eq!(
            fallback(None, &Profiles::default(), None).expect("none"),
            Fallback::Nothing
        );
    }

    #[test]
    fn an_unknown_profile_is_an_error_not_a_silent_default() {
        let err = fallback(Some("nope"), &saved(), Some(dev())).expect_err("unknown");
        assert!(
            err.to_string().contains("kiln login --profile nope"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn saved_profiles_are_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kiln").join(FILE);
        assert_eq!(load(&path).expect("no file yet"), Profiles::default());
        save(&path, &saved()).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).expect("load"), saved());
    }
}
